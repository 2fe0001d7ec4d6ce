// Static fan-out: foreach over lists, records, matrices, zips and globs;
// collects; and the errors, each at its line.
#include <gtest/gtest.h>

#include <string>
#include <vector>

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
