#include <gtest/gtest.h>
#include <sys/stat.h>

#include "stagekit/pipeline.h"
#include "unit/test_util.h"
#include "util/text.h"

namespace stagekit {
namespace {

using testing::TempDir;
using testing::WriteFile;

Result<Pipeline> Parse(const std::string& yaml) { return ParsePipeline(yaml, "/p/pipeline.yaml"); }

std::string ErrorOf(const std::string& yaml) {
  auto p = Parse(yaml);
  EXPECT_FALSE(p.ok()) << yaml;
  EXPECT_EQ(p.status().code(), Code::kInvalidPipeline) << p.status().message();
  return p.status().message();
}

TEST(PipelineTest, ParsesAFullPipeline) {
  auto p = Parse(R"(
name: demo
libraries: [stagekit_examples, ../lib/libx.so]
job: {name: j, seed: 18446744073709551615, params: {lang: en}}
stages:
  - name: reduce
    stage: wordcount.reduce
    inputs: {a: {from: map}, b: {file: data/b.txt}}
  - name: map
    stage: wordcount.map
    inputs: {text: data/a.txt}
    output: parts/map.tsv
    kwargs: {n: 3, f: 0.5, yes: true, code: "007", none: null, list: [1, two]}
    resources: {cpus: 2, gpus: 0.01, memory: 1GiB, custom: {"vm:g4dn.2xlarge": 1}}
    timeout: 90s
)");
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(p->name, "demo");
  EXPECT_EQ(p->job.seed, 18446744073709551615ull);
  EXPECT_EQ(p->job.params, Json({{"lang", "en"}}));
  ASSERT_EQ(p->stages.size(), 2u);
  EXPECT_EQ(p->stages[0].name, "map");  // dependencies first
  EXPECT_EQ(p->stages[1].name, "reduce");
  const PipelineStage& map = p->stages[0];
  EXPECT_EQ(map.inputs.at("text").file, "/p/data/a.txt");
  EXPECT_EQ(map.output, "parts/map.tsv");
  EXPECT_EQ(map.kwargs,
            Json::parse(R"({"n":3,"f":0.5,"yes":true,"code":"007","none":null,"list":[1,"two"]})"));
  EXPECT_EQ(map.options.resources.cpus, 2);
  EXPECT_EQ(map.options.resources.gpus, 0.01);
  EXPECT_EQ(map.options.resources.memory_bytes, 1073741824u);
  EXPECT_EQ(map.options.resources.custom.at("vm:g4dn.2xlarge"), 1);
  EXPECT_EQ(map.options.timeout->count(), 90000);
  const PipelineStage& reduce = p->stages[1];
  EXPECT_EQ(reduce.inputs.at("a").from_stage, "map");
  EXPECT_EQ(reduce.inputs.at("b").file, "/p/data/b.txt");
  EXPECT_EQ(reduce.output, "reduce.out");
  EXPECT_EQ(reduce.line, 6);
}

TEST(PipelineTest, DefaultsNameAndJobFromTheFile) {
  auto p = Parse("stages:\n  - {name: a, stage: s}\n");
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(p->name, "pipeline");
  EXPECT_EQ(p->job.name, "pipeline");
  EXPECT_EQ(p->job.seed, 0u);
}

TEST(PipelineTest, SyntaxErrorsCarryLineAndColumn) {
  std::string e = ErrorOf("stages:\n  - name: a\n    stage: [unclosed\n");
  EXPECT_EQ(e.rfind("/p/pipeline.yaml:", 0), 0u) << e;
  EXPECT_NE(e.find("YAML syntax error"), std::string::npos) << e;
  EXPECT_NE(e.find(":4:"), std::string::npos) << e;
}

// Latin-1 in a name, a path or a kwarg is refused where it enters, at its
// line and column, rather than failing mid-run with a JSON library message.
TEST(PipelineTest, TextThatIsNotUtf8IsPointedAt) {
  std::string e = ErrorOf("stages:\n  - {name: a, stage: s, kwargs: {k: caf\xe9}}\n");
  EXPECT_EQ(e,
            "/p/pipeline.yaml:2:40: byte 0xE9 is not UTF-8; stagekit reads pipelines as "
            "UTF-8: re-encode the file (iconv -f latin1 -t utf-8) and rename files whose "
            "names are not UTF-8");
  EXPECT_TRUE(Parse("stages:\n  - {name: a, stage: s, kwargs: {k: caf\xc3\xa9}}\n").ok());
  auto named = LoadPipeline("/tmp/caf\xe9/pipeline.yaml");
  ASSERT_FALSE(named.ok());
  EXPECT_EQ(named.status().code(), Code::kInputError);
  EXPECT_NE(named.status().message().find("has a path that is not UTF-8"), std::string::npos);
}

TEST(PipelineTest, UnknownKeysArePointedAt) {
  std::string e = ErrorOf("stages:\n  - name: a\n    stage: s\n    inptus: {}\n");
  EXPECT_EQ(e,
            "/p/pipeline.yaml:4:5: stage: unknown key 'inptus' (expected one of: name, stage, "
            "inputs, output, kwargs, resources, timeout, keep, foreach)");
  EXPECT_NE(ErrorOf("stage: []\n").find("unknown key 'stage'"), std::string::npos);
}

TEST(PipelineTest, RejectsBadStructure) {
  EXPECT_NE(ErrorOf("").find("the pipeline file is empty"), std::string::npos);
  EXPECT_NE(ErrorOf("name: x\n").find("'stages' must be a non-empty list"), std::string::npos);
  EXPECT_NE(ErrorOf("stages:\n  - {stage: s}\n").find("missing 'name'"), std::string::npos);
  EXPECT_NE(ErrorOf("stages:\n  - {name: a}\n").find("missing 'stage'"), std::string::npos);
  EXPECT_NE(ErrorOf("stages:\n  - {name: 'a b', stage: s}\n").find("must be 1 to 200 letters"),
            std::string::npos);
  EXPECT_NE(ErrorOf("stages:\n  - {name: a, stage: s, inputs: {x: 3.5.5}, output: ../up}\n")
                .find("has a '..' part; give a relative file name"),
            std::string::npos);
  EXPECT_NE(ErrorOf("job: {seed: -4}\nstages:\n  - {name: a, stage: s}\n")
                .find("job.seed must be a whole number"),
            std::string::npos);
  EXPECT_NE(ErrorOf("stages:\n  - {name: a, stage: s, resources: {gpus: 1.5}}\n").find("fractions"),
            std::string::npos);
  EXPECT_NE(
      ErrorOf("stages:\n  - {name: a, stage: s, resources: {memory: lots}}\n").find("as a size"),
      std::string::npos);
  EXPECT_NE(ErrorOf("stages:\n  - {name: a, stage: s, timeout: soon}\n").find("as a duration"),
            std::string::npos);
  EXPECT_NE(
      ErrorOf("stages:\n  - {name: a, stage: s, kwargs: {k: 1, k: 2}}\n").find("'k' appears twice"),
      std::string::npos);
  EXPECT_NE(
      ErrorOf("stages:\n  - {name: a, stage: s, inputs: {x: {from: b, file: c}}}\n").find("both"),
      std::string::npos);
}

TEST(PipelineTest, DuplicateStageNamesAndOutputs) {
  std::string e = ErrorOf("stages:\n  - {name: a, stage: s}\n  - {name: a, stage: t}\n");
  EXPECT_NE(e.find("3:"), std::string::npos) << e;
  EXPECT_NE(e.find("duplicate stage name 'a' (first declared on line 2)"), std::string::npos) << e;
  e = ErrorOf("stages:\n  - {name: a, stage: s, output: o}\n  - {name: b, stage: t, output: o}\n");
  EXPECT_NE(e.find("writes output 'o', which the stage on line 2 already writes"),
            std::string::npos)
      << e;
}

// Outputs that would overwrite something they must not, or that two names
// would share on disk, are refused when the pipeline is loaded (exit 3).
TEST(PipelineTest, OutputsThatCannotBeFilesOfTheirOwnAreRefused) {
  auto output = [](const std::string& out) {
    return ErrorOf("stages:\n  - {name: a, stage: s, output: " + out + "}\n");
  };
  EXPECT_NE(output(".stagekit-run.json").find("'.stagekit', a name stagekit keeps"),
            std::string::npos);
  EXPECT_NE(output("sub/.stagekit-tmp.1.2.h").find("'.stagekit'"), std::string::npos);
  EXPECT_NE(output("'.'").find("has a '.' part"), std::string::npos);
  EXPECT_NE(output("a/..").find("has a '..' part"), std::string::npos);
  EXPECT_NE(output("a//b").find("empty part"), std::string::npos);
  EXPECT_NE(output("a/").find("ends with '/'"), std::string::npos);
  EXPECT_NE(output("/etc/passwd").find("is absolute"), std::string::npos);
  EXPECT_NE(output(std::string(256, 'x')).find("longer than 255 bytes"), std::string::npos);
  EXPECT_TRUE(
      Parse("stages:\n  - {name: a, stage: s, output: " + std::string(255, 'x') + "}\n").ok());
  // Control bytes: "a\0x" and "a\0y" would both be "a" on disk.
  std::string e = output("\"a\\0x\"");
  EXPECT_NE(e.find("control byte 0x00"), std::string::npos) << e;
  EXPECT_NE(output("\"a\\x01b\"").find("control byte 0x01"), std::string::npos);
  EXPECT_NE(ErrorOf("stages:\n  - {name: a, stage: s, inputs: {\"i\\tn\": x}}\n")
                .find("control byte 0x09"),
            std::string::npos);
  EXPECT_NE(ErrorOf("stages:\n  - {name: a, stage: s, inputs: {in: \"x\\ny\"}}\n")
                .find("control byte 0x0a"),
            std::string::npos);
  // A file output and a folder of another.
  e = ErrorOf(
      "stages:\n  - {name: a, stage: s, output: d}\n  - {name: b, stage: s, output: d/e}\n");
  EXPECT_NE(e.find("output 'd/e' lies inside output 'd' (line 2), which is a file"),
            std::string::npos)
      << e;
  // Stage names '.' and '..' (audit --keep and default outputs use them as names).
  EXPECT_NE(ErrorOf("stages:\n  - {name: '..', stage: s}\n").find("not '.' or '..'"),
            std::string::npos);
  EXPECT_NE(ErrorOf("stages:\n  - {name: '.', stage: s}\n").find("not '.' or '..'"),
            std::string::npos);
  EXPECT_NE(ErrorOf("stages:\n  - {name: .stagekit-run, stage: s}\n").find("default output"),
            std::string::npos);
}

// A 636-byte pipeline with nested aliases in job.params once took 23 GB.
TEST(PipelineTest, AliasBombsAndDeepNestingAreRefused) {
  std::string bomb = "job:\n  params:\n    a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i < 9; ++i) {
    bomb += "    a" + std::to_string(i) + ": &a" + std::to_string(i) + " [";
    for (int k = 0; k < 10; ++k) bomb += (k ? ", *a" : "*a") + std::to_string(i - 1);
    bomb += "]\n";
  }
  bomb += "stages:\n  - {name: a, stage: s}\n";
  EXPECT_LT(bomb.size(), 1000u);
  EXPECT_NE(ErrorOf(bomb).find("expands to more than 1000000 values"), std::string::npos);
  std::string deep = "stages:\n  - {name: a, stage: s, kwargs: {k: " + std::string(100, '[') +
                     std::string(100, ']') + "}}\n";
  EXPECT_NE(ErrorOf(deep).find("nests deeper than 64 levels"), std::string::npos);
}

TEST(PipelineTest, OnlyRegularFilesOfBoundedSizeAreRead) {
  TempDir dir;
  auto fifo = dir / "p.fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto p = LoadPipeline(fifo);  // must not wait for a writer
  EXPECT_EQ(p.status().code(), Code::kInputError);
  EXPECT_NE(p.status().message().find("is not a regular file"), std::string::npos);
  WriteFile(dir / "big.yaml", std::string(kMaxPipelineBytes + 1, '#'));
  p = LoadPipeline(dir / "big.yaml");
  EXPECT_EQ(p.status().code(), Code::kInvalidPipeline);
  EXPECT_NE(p.status().message().find("may be at most 64 MiB"), std::string::npos);
}

TEST(PipelineTest, KeepIsTrueFalseOrUnset) {
  auto p = Parse(
      "stages:\n  - {name: a, stage: s, keep: true}\n  - {name: b, stage: s, keep: "
      "false}\n  - {name: c, stage: s}\n");
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(p->stages[0].keep, std::optional<bool>(true));
  EXPECT_EQ(p->stages[1].keep, std::optional<bool>(false));
  EXPECT_EQ(p->stages[2].keep, std::nullopt);
  EXPECT_NE(ErrorOf("stages:\n  - {name: a, stage: s, keep: yes please}\n")
                .find("keep must be true or false"),
            std::string::npos);
}

TEST(PipelineTest, ReferencesAndCycles) {
  EXPECT_NE(ErrorOf("stages:\n  - {name: a, stage: s, inputs: {x: {from: ghost}}}\n")
                .find("input 'x' comes from unknown stage 'ghost'"),
            std::string::npos);
  EXPECT_NE(ErrorOf("stages:\n  - {name: a, stage: s, inputs: {x: {from: a}}}\n").find("a cycle"),
            std::string::npos);
  std::string e = ErrorOf(R"(stages:
  - {name: ok, stage: s}
  - {name: a, stage: s, inputs: {x: {from: c}, y: {from: ok}}}
  - {name: b, stage: s, inputs: {x: {from: a}}}
  - {name: c, stage: s, inputs: {x: {from: b}}}
)");
  EXPECT_NE(e.find("dependency cycle: "), std::string::npos) << e;
  for (const char* s : {"a -> ", "b -> ", "c -> "}) EXPECT_NE(e.find(s), std::string::npos) << e;
  EXPECT_EQ(e.find("ok ->"), std::string::npos) << e;
}

TEST(PipelineTest, LoadReportsUnreadableFiles) {
  auto p = LoadPipeline("/nonexistent/pipeline.yaml");
  EXPECT_EQ(p.status().code(), Code::kInputError);
  EXPECT_NE(p.status().message().find("cannot read pipeline file"), std::string::npos);
}

TEST(PipelineTest, ResolvesLibrariesByNameAndPath) {
  TempDir dir;
  WriteFile(dir / "libs" / "libfoo.so", "");
  WriteFile(dir / "p" / "local.so", "");
  auto p = ParsePipeline("libraries: [foo, local.so]\nstages:\n  - {name: a, stage: s}\n",
                         dir / "p" / "pipeline.yaml");
  ASSERT_TRUE(p.ok());
  auto libs = ResolveLibraries(*p, {dir / "nothing-here", dir / "libs"});
  ASSERT_TRUE(libs.ok()) << libs.status().message();
  EXPECT_EQ((*libs)[0], dir / "libs" / "libfoo.so");
  EXPECT_EQ((*libs)[1], dir / "p" / "local.so");
  auto missing = ResolveLibraries(*p, {dir / "nothing-here"});
  EXPECT_EQ(missing.status().code(), Code::kLibraryError);
  EXPECT_NE(missing.status().message().find("not found in: " + (dir / "nothing-here").string()),
            std::string::npos)
      << missing.status().message();
}

TEST(PipelineTest, ResourceOverridesFromTheCommandLine) {
  auto p = Parse(
      "stages:\n  - {name: a, stage: s, resources: {custom: {old: 1}}}\n  - {name: b, stage: s}\n");
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(ApplyResourceOverride(*p, "a:gpus=0.01,vm:g4dn.2xlarge=1,memory=2GiB,old=0").ok());
  const Resources& a = p->Find("a")->options.resources;
  EXPECT_EQ(a.gpus, 0.01);
  EXPECT_EQ(a.memory_bytes, 2147483648u);
  EXPECT_EQ(a.custom, (std::map<std::string, double>{{"vm:g4dn.2xlarge", 1}}));
  EXPECT_EQ(p->Find("b")->options.resources.gpus, 0);
  ASSERT_TRUE(ApplyResourceOverride(*p, "*:cpus=2").ok());
  EXPECT_EQ(p->Find("a")->options.resources.cpus, 2);
  EXPECT_EQ(p->Find("b")->options.resources.cpus, 2);
  for (const char* bad : {"nocolon", ":cpus=1", "ghost:cpus=1", "a:cpus", "a:cpus=lots",
                          "a:gpus=1.5", "a:memory=huge", "a:"}) {
    Status s = ApplyResourceOverride(*p, bad);
    EXPECT_EQ(s.code(), Code::kUsage) << bad;
    EXPECT_NE(s.message().find("write STAGE:KEY=VALUE"), std::string::npos) << s.message();
  }
}

TEST(PipelineTest, UnregisteredStagesAreNamedWithSuggestions) {
  void (*fn)(StageContext&) = [](StageContext&) {};
  Registry r;
  r.Add("wordcount.map", fn, "x.cc", 1);
  auto p = Parse("stages:\n  - {name: a, stage: wordcount.mop}\n");
  ASSERT_TRUE(p.ok());
  Status s = CheckStagesRegistered(*p, r);
  EXPECT_EQ(s.code(), Code::kUnknownStage);
  EXPECT_EQ(s.message(),
            "/p/pipeline.yaml:2: stage 'a' uses unknown stage 'wordcount.mop'; did you "
            "mean 'wordcount.map'?");
}

// ---- static fan-out: foreach over lists, records, matrices, zips and globs;
// collects; and the errors, each at its line ----

std::vector<std::string> Names(const Pipeline& p) {
  std::vector<std::string> names;
  for (const PipelineStage& st : p.stages) names.push_back(st.name);
  return names;
}

TEST(FanoutTest, AListMakesOneInstancePerItemWithItsValues) {
  auto p = Parse(R"(stages:
  - name: map
    stage: s
    foreach: {list: [art, cookie, 3]}
    inputs: {text: "corpus/{item}.txt"}
    output: "map/{item}.tsv"
    kwargs: {which: "{item}", label: "x-{key}", n: 2}
)");
  ASSERT_TRUE(p.ok()) << p.status().message();
  // In list order, as declared.
  ASSERT_EQ(Names(*p), (std::vector<std::string>{"map[art]", "map[cookie]", "map[3]"}));
  const PipelineStage& art = *p->Find("map[art]");
  EXPECT_EQ(art.output, "map/art.tsv");
  EXPECT_EQ(art.inputs.at("text").file, "/p/corpus/art.txt");
  EXPECT_EQ(art.kwargs, Json({{"which", "art"}, {"label", "x-art"}, {"n", 2}}));
  // "{item}" alone keeps the item's type: 3 is a number, as YAML reads it.
  EXPECT_EQ(p->Find("map[3]")->kwargs["which"], Json(3));
}

TEST(FanoutTest, RecordsMatricesAndZipsNameInstancesByTheirValues) {
  auto p = Parse(R"(stages:
  - name: rec
    stage: s
    foreach: {list: [{a: 1, b: x}, {a: 2, b: y}]}
    output: "rec/{a}{b}"
  - name: train
    stage: s
    foreach: {matrix: {lr: [0.1, 0.01], seed: [1, 2, 3]}}
    kwargs: {lr: "{lr}", seed: "{seed}"}
  - name: pair
    stage: s
    foreach: {zip: {x: [1, 2], y: [a, b]}}
)");
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_NE(p->Find("rec[a=1,b=x]"), nullptr);
  EXPECT_EQ(p->Find("rec[a=2,b=y]")->output, "rec/2y");
  // The product, six instances, typed kwargs; the default output NAME/KEY.out.
  std::vector<std::string> train;
  for (const std::string& n : Names(*p)) {
    if (n.rfind("train[", 0) == 0) train.push_back(n);
  }
  EXPECT_EQ(train.size(), 6u);
  const PipelineStage& t = *p->Find("train[lr=0.01,seed=3]");
  EXPECT_EQ(t.kwargs, Json({{"lr", 0.01}, {"seed", 3}}));
  EXPECT_EQ(t.output, "train/lr=0.01,seed=3.out");
  EXPECT_NE(p->Find("pair[x=1,y=a]"), nullptr);
  EXPECT_NE(p->Find("pair[x=2,y=b]"), nullptr);
  EXPECT_EQ(p->Find("pair[x=1,y=b]"), nullptr);  // zip pairs, no product
}

TEST(FanoutTest, AGlobFindsFilesInOrderAndCaptures) {
  TempDir dir;
  for (const char* f : {"corpus/b.txt", "corpus/a.txt", "corpus/c.md", "corpus/sub/d.txt"}) {
    WriteFile(dir / f, "x");
  }
  WriteFile(dir / "p.yaml", R"(stages:
  - name: count
    stage: s
    foreach: {glob: "corpus/{name}.txt"}
    inputs: {text: "{path}"}
    output: "counts/{name}"
  - name: all
    stage: s
    inputs: {parts: {from: "count[*]"}}
)");
  auto p = LoadPipeline(dir / "p.yaml");
  ASSERT_TRUE(p.ok()) << p.status().message();
  const PipelineStage& a = *p->Find("count[a]");
  EXPECT_EQ(a.inputs.at("text").file, (dir / "corpus" / "a.txt").string());
  EXPECT_NE(p->Find("count[b]"), nullptr);
  EXPECT_EQ(p->Find("count[c]"), nullptr);  // .md
  EXPECT_EQ(p->Find("count[d]"), nullptr);  // a '{name}' is one part of a path
  // The collect: one input per instance, named by key, from that instance.
  const PipelineStage& all = *p->Find("all");
  ASSERT_EQ(all.inputs.size(), 2u);
  EXPECT_EQ(all.inputs.at("parts[a]").from_stage, "count[a]");
  EXPECT_EQ(all.inputs.at("parts[b]").from_stage, "count[b]");
  // Dependencies follow: the collect comes after every instance.
  EXPECT_EQ(Names(*p).back(), "all");

  // Two captures, in a key of NAME=VALUE pairs; a glob finding nothing is an error.
  WriteFile(dir / "q.yaml", R"(stages:
  - {name: m, stage: s, foreach: {glob: "corpus/{dir}/{name}.txt"}}
  - {name: none, stage: s, foreach: {glob: "nothing/{x}.bin"}}
)");
  auto q = LoadPipeline(dir / "q.yaml");
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.status().message().find(":3:"), std::string::npos) << q.status().message();
  EXPECT_NE(q.status().message().find("foreach glob 'nothing/{x}.bin' matches no file"),
            std::string::npos)
      << q.status().message();
  WriteFile(dir / "r.yaml",
            "stages:\n  - {name: m, stage: s, foreach: {glob: \"corpus/{dir}/{name}.txt\"}}\n");
  auto r = LoadPipeline(dir / "r.yaml");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(Names(*r), (std::vector<std::string>{"m[dir=sub,name=d]"}));

  // '*' and '?' match without capturing; a capture takes the longest run
  // that lets the rest match, as a greedy regex would.
  for (const char* f : {"logs/a-b-c.log", "logs/x-1.log", "logs/-2.log", "logs/y.log"}) {
    WriteFile(dir / f, "x");
  }
  WriteFile(dir / "s.yaml",
            "stages:\n  - {name: m, stage: s, foreach: {glob: \"logs/{name}-?.lo*\"}, output: "
            "\"o/{name}\"}\n");
  auto g = LoadPipeline(dir / "s.yaml");
  ASSERT_TRUE(g.ok()) << g.status().message();
  EXPECT_EQ(Names(*g), (std::vector<std::string>{"m[a-b]", "m[x]"}));
}

TEST(FanoutTest, CollectsFilterByKeyAndPairInstancesByName) {
  auto p = Parse(R"(stages:
  - {name: map, stage: s, foreach: {list: [apple, avocado, banana]}, output: "m/{item}"}
  - {name: post, stage: s, foreach: {list: [apple, banana]}, output: "p/{item}",
     inputs: {in: {from: "map[{item}]"}}}
  - {name: a_only, stage: s, inputs: {parts: {from: "map[a*]"}}, output: a}
)");
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(p->Find("post[banana]")->inputs.at("in").from_stage, "map[banana]");
  const PipelineStage& a = *p->Find("a_only");
  ASSERT_EQ(a.inputs.size(), 2u);
  EXPECT_EQ(a.inputs.count("parts[apple]"), 1u);
  EXPECT_EQ(a.inputs.count("parts[avocado]"), 1u);
}

// --resources takes an instance name (whose key may hold ':') or a pattern.
TEST(FanoutTest, ResourceOverridesTakeInstancesAndPatterns) {
  auto p = Parse(
      "stages:\n  - {name: m, stage: s, foreach: {list: [\"a:b\", c, d]}, output: \"o/{key}\"}\n"
      "  - {name: other, stage: s}\n");
  ASSERT_TRUE(p.ok()) << p.status().message();
  ASSERT_TRUE(ApplyResourceOverride(*p, "m[a:b]:cpus=3,vm:x=1").ok());
  EXPECT_EQ(p->Find("m[a:b]")->options.resources.cpus, 3);
  EXPECT_EQ(p->Find("m[a:b]")->options.resources.custom,
            (std::map<std::string, double>{{"vm:x", 1}}));
  ASSERT_TRUE(ApplyResourceOverride(*p, "m[*]:gpus=0.5").ok());
  EXPECT_EQ(p->Find("m[c]")->options.resources.gpus, 0.5);
  EXPECT_EQ(p->Find("m[d]")->options.resources.gpus, 0.5);
  EXPECT_EQ(p->Find("other")->options.resources.gpus, 0);
  EXPECT_EQ(ApplyResourceOverride(*p, "m[z*]:cpus=1").code(), Code::kUsage);
  EXPECT_EQ(ApplyResourceOverride(*p, "m[a:cpus=1").code(), Code::kUsage);
}

TEST(FanoutTest, MistakesAreNamedAtTheirLine) {
  struct Case {
    const char* yaml;
    const char* expect;
  } cases[] = {
      {"stages:\n  - {name: m, stage: s, foreach: {list: [a]}, output: \"{nope}\"}\n",
       ":2:55: stage 'm': output: '{nope}' is not defined by the stage's foreach (it defines "
       "item, key)"},
      {"stages:\n  - {name: m, stage: s, foreach: {list: [a, b]}, output: same}\n",
       "stage 'm[b]' writes output 'same', which the stage on line 2 already writes"},
      {"stages:\n  - {name: m, stage: s, foreach: {list: [a, a]}}\n",
       "two foreach items have the key 'a'"},
      {"stages:\n  - {name: m, stage: s, foreach: {list: [a/b]}}\n",
       "the foreach item key 'a/b' holds '/'"},
      {"stages:\n  - {name: m, stage: s, foreach: {list: []}}\n", "foreach has no items"},
      {"stages:\n  - {name: m, stage: s, foreach: {each: [a]}}\n",
       "foreach 'each' is not one of list, matrix, zip, glob"},
      {"stages:\n  - {name: m, stage: s, foreach: {zip: {a: [1, 2], b: [1]}}}\n",
       "foreach zip pairs lists of one length: 'b' has 1, 'a' has 2"},
      {"stages:\n  - {name: m, stage: s, foreach: {glob: \"x.txt\"}}\n", "has no capture"},
      {"stages:\n  - {name: m, stage: s, foreach: {list: [a]}}\n"
       "  - {name: r, stage: s, inputs: {p: {from: \"x[*]\"}}}\n",
       "input 'p' collects from 'x[*]', which matches no stage instance"},
      {"stages:\n  - {name: m, stage: s, foreach: {list: [a]}}\n"
       "  - {name: r, stage: s, inputs: {p: {from: m}}}\n",
       "input 'p' comes from 'm', a foreach stage: name one instance ('m[a]') or collect them "
       "all ('m[*]')"},
  };
  for (const Case& c : cases) {
    const std::string e = ErrorOf(c.yaml);
    EXPECT_NE(e.find(c.expect), std::string::npos) << c.yaml << "\n -> " << e;
  }
  // 1,000 x 1,000 is past the cap, refused before anything is made.
  std::string big = "stages:\n  - {name: m, stage: s, foreach: {matrix: {a: [";
  for (int i = 0; i < 1000; ++i) big += (i ? "," : "") + std::to_string(i);
  big += "], b: [";
  for (int i = 0; i < 1000; ++i) big += (i ? "," : "") + std::to_string(i);
  big += "]}}}\n";
  EXPECT_NE(ErrorOf(big).find("foreach makes 1000000 items; at most 100000"), std::string::npos);
}

// A foreach over a stage's items is one template NAME[*] until the run;
// what can be checked without its items is checked at load.
TEST(FanoutTest, AForeachOverAStagesItemsIsATemplateUntilTheRun) {
  auto p = Parse(R"(stages:
  - {name: split, stage: s}
  - name: work
    stage: s
    foreach: {from: split}
    inputs: {text: "data/{name}.txt", table: {from: split}}
    output: "w/{key}.txt"
  - {name: all, stage: s, inputs: {parts: {from: "work[*]"}, some: {from: "work[a*]"}}}
)");
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_TRUE(p->dynamic());
  EXPECT_EQ(Names(*p), (std::vector<std::string>{"split", "work[*]", "all"}));
  const PipelineStage& tmpl = *p->Find("work[*]");
  EXPECT_EQ(tmpl.foreach_from, "split");
  EXPECT_NE(tmpl.dynamic, nullptr);
  EXPECT_EQ(p->Find("all")->inputs.at("some").from_stage, "work[*]");
  EXPECT_EQ(p->Find("all")->inputs.at("some").collect, "a*");

  TempDir dir;
  const std::filesystem::path items = dir / "items.jsonl";
  WriteFile(items, "{\"key\": \"a1\", \"name\": \"x\"}\n{\"name\": \"y\", \"n\": 2}\n");
  // A command-line override of the template reaches every instance.
  ASSERT_TRUE(ApplyResourceOverride(*p, "work[*]:cpus=3").ok());
  auto made = ExpandDynamicStage(*p->Find("work[*]"), items);
  ASSERT_TRUE(made.ok()) << made.status().message();
  ASSERT_EQ(made->size(), 2u);
  EXPECT_EQ((*made)[0].name, "work[a1]");
  EXPECT_EQ((*made)[1].name, "work[name=y,n=2]");  // fields in the line's order
  EXPECT_EQ((*made)[0].inputs.at("text").file, "/p/data/x.txt");
  EXPECT_EQ((*made)[0].inputs.at("table").from_stage, "split");
  EXPECT_EQ((*made)[1].output, "w/name=y,n=2.txt");
  EXPECT_TRUE((*made)[0].foreach_from.empty());
  EXPECT_EQ((*made)[1].options.resources.cpus, 3);

  PipelineStage all = *p->Find("all");
  auto added = PointCollects(all, "work[*]", {"work[a1]", "work[name=y,n=2]"});
  EXPECT_EQ(added.size(), 3u);
  EXPECT_EQ(all.inputs.at("parts[name=y,n=2]").from_stage, "work[name=y,n=2]");
  EXPECT_EQ(all.inputs.at("some[a1]").from_stage, "work[a1]");
  EXPECT_EQ(all.inputs.count("some[name=y,n=2]"), 0u);
  EXPECT_EQ(all.inputs.count("parts"), 0u);

  // An item list that is not there, or not UTF-8.
  auto missing = ExpandDynamicStage(tmpl, dir / "none.jsonl");
  EXPECT_EQ(missing.status().code(), Code::kInputError);
  EXPECT_NE(missing.status().message().find("the item list stage 'split' made for 'work[*]'"),
            std::string::npos);
  WriteFile(items, "\"caf\xE9\"\n");
  auto latin1 = ExpandDynamicStage(tmpl, items);
  EXPECT_NE(latin1.status().message().find("items.jsonl:1:5: the text is not UTF-8"),
            std::string::npos)
      << latin1.status().message();
}

TEST(FanoutTest, ForeachOverItemsMistakesAreNamedAtLoad) {
  struct Case {
    const char* yaml;
    const char* expect;
  } cases[] = {
      {"stages:\n  - {name: m, stage: s, foreach: {from: nope}}\n",
       "stage 'm': foreach: from names unknown stage 'nope'"},
      {"stages:\n  - {name: m, stage: s, foreach: {from: m}}\n",
       "foreach: from names the stage itself"},
      {"stages:\n  - {name: a, stage: s}\n  - {name: m, stage: s, foreach: {from: a, list: [x]}}\n",
       "foreach: unknown key 'list'"},
      {"stages:\n  - {name: a, stage: s}\n  - {name: m, stage: s, foreach: {from: a}}\n"
       "  - {name: n, stage: s, foreach: {from: m}}\n",
       "itself a foreach over a stage's items"},
      {"stages:\n  - {name: a, stage: s}\n  - {name: m, stage: s, foreach: {from: a}}\n"
       "  - {name: r, stage: s, inputs: {x: {from: \"m[k]\"}}}\n",
       "input 'x' comes from 'm[k]', an instance of a foreach over a stage's items"},
      {"stages:\n  - {name: a, stage: s}\n"
       "  - {name: m, stage: s, foreach: {from: a}, inputs: {x: {from: \"a{n}\"}}}\n",
       "'from' cannot use {names}"},
      {"stages:\n  - {name: a, stage: s}\n  - {name: m, stage: s, foreach: {from: a}}\n"
       "  - {name: m, stage: s, foreach: {list: [k]}}\n",
       "another stage's instances are named like its own ('m[k]')"},
      {"stages:\n  - {name: a, stage: s, inputs: {x: {from: \"m[*]\"}}}\n"
       "  - {name: m, stage: s, foreach: {from: a}}\n",
       "dependency cycle"},
  };
  for (const Case& c : cases) {
    const std::string e = ErrorOf(c.yaml);
    EXPECT_NE(e.find(c.expect), std::string::npos) << c.yaml << "\n -> " << e;
  }
}

// A collected input arrives as NAME[KEY] inputs; input_list gives them back
// in key order, and a plain input of that name as one pair with no key.
TEST(FanoutTest, InputListGivesACollectInKeyOrder) {
  const std::map<std::string, std::filesystem::path> inputs = {
      {"parts[b]", "/b"}, {"parts[a]", "/a"}, {"parts2", "/x"},
      {"partsz", "/z"},   {"part", "/p"},     {"single", "/s"}};
  const JobSpec job;
  const Json kwargs = Json::object();
  StageContext ctx("s", "s", &inputs, "/out", &job, &kwargs);
  using List = std::vector<std::pair<std::string, std::filesystem::path>>;
  EXPECT_EQ(ctx.input_list("parts"), (List{{"a", "/a"}, {"b", "/b"}}));
  EXPECT_EQ(ctx.input_list("single"), (List{{"", "/s"}}));
  EXPECT_EQ(ctx.input_list("part"), (List{{"", "/p"}}));
  EXPECT_EQ(ctx.input_list("none"), List{});
}

TEST(FanoutTest, WildMatch) {
  using util::WildMatch;
  EXPECT_TRUE(WildMatch("*", ""));
  EXPECT_TRUE(WildMatch("a*", "apple"));
  EXPECT_TRUE(WildMatch("*e", "apple"));
  EXPECT_TRUE(WildMatch("a*p*e", "apple"));
  EXPECT_FALSE(WildMatch("a*x", "apple"));
  EXPECT_FALSE(WildMatch("b*", "apple"));
  EXPECT_TRUE(WildMatch("lr=0.1,*", "lr=0.1,seed=3"));
  EXPECT_TRUE(WildMatch(std::string(50, '*') + "b", std::string(5000, 'a') + "b"));
  EXPECT_FALSE(WildMatch(std::string(50, '*') + "b", std::string(5000, 'a')));
}

}  // namespace
}  // namespace stagekit
