// Static fan-out: a stage's `foreach` (a list, a matrix, a zip or a glob of
// files) read into items, each with a key that names its stage instance
// ("map[art]", "train[lr=0.1,seed=3]") and the values its `{name}`s stand
// for in the stage's output, inputs and kwargs. Used by the pipeline parser.
#ifndef STAGEKIT_FANOUT_H_
#define STAGEKIT_FANOUT_H_

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "stagekit/pipeline.h"
#include "stagekit/stage.h"
#include "stagekit/status.h"

namespace stagekit::fanout {

// At most this many items per foreach (kInvalidPipeline past it), and this
// many directory entries looked at by one glob.
inline constexpr std::size_t kMaxItems = kMaxForeachItems;
inline constexpr std::size_t kMaxGlobEntries = 1000000;
inline constexpr std::size_t kMaxKeyBytes = 200;

struct Item {
  std::string key;
  std::vector<std::pair<std::string, Json>> vars;  // name -> value, `key` among them

  const Json* Find(std::string_view name) const;
};

// How the parser reports a problem at a place of the file, and reads a YAML
// scalar as it reads kwargs (typed: 0.1 is a number, "0.1" a string).
struct Reader {
  std::function<Status(const YAML::Mark&, const std::string&)> error;
  std::function<Result<Json>(const YAML::Node&, const std::string&)> to_json;
};

// The items of `foreach` (a mapping with one of list, matrix, zip, glob),
// in their stable order: list order, the matrix's product (first key
// outermost), zip's pairs, the glob's matches sorted by path. A glob is
// relative to `base_dir` (the pipeline's folder) unless absolute.
Result<std::vector<Item>> Items(const YAML::Node& foreach, const std::filesystem::path& base_dir,
                                const std::string& where, const Reader& reader);

// The items of a dynamic foreach: `text` is an item list in JSON Lines (see
// ExpandDynamicStage in stagekit/pipeline.h). `lines[k]` is where item k is
// (1-based). kInvalidPipeline "LINE: why" for the first problem.
Result<std::vector<Item>> JsonLinesItems(std::string_view text, std::vector<std::size_t>& lines);

// `text` with each `{name}` replaced by the item's value ("" error when it
// names nothing the item defines: the message says so). Text without
// braces is returned as it is.
Result<std::string> Substitute(std::string_view text, const Item& item);
// A whole "{name}" string: the item's value with its type (a kwarg
// `lr: "{lr}"` stays the number 0.1); nullptr when `text` is not one.
const Json* WholeValue(std::string_view text, const Item& item);

}  // namespace stagekit::fanout

#endif  // STAGEKIT_FANOUT_H_
