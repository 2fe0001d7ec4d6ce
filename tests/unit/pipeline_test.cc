#include <gtest/gtest.h>
#include <sys/stat.h>

#include "stagekit/pipeline.h"
#include "unit/test_util.h"

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

}  // namespace
}  // namespace stagekit
