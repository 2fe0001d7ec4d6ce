#include "fanout.h"

#include "stagekit/pipeline.h"

#include <algorithm>
#include <map>
#include <set>
#include <string_view>
#include <system_error>

namespace stagekit::fanout {

namespace fs = std::filesystem;

namespace {

bool IsVarName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  if (!(std::isalpha(static_cast<unsigned char>(name[0])) || name[0] == '_')) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
  });
}

// A value as it reads in a name or a key: strings as they are, 0.1, 3, true.
std::string ValueText(const Json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// Why `key` cannot name a stage instance, or "".
std::string BadKey(const std::string& key) {
  if (key.empty()) return "is empty";
  if (key.size() > kMaxKeyBytes) {
    return "is longer than " + std::to_string(kMaxKeyBytes) + " bytes";
  }
  for (unsigned char c : key) {
    if (c < 0x20 || c == 0x7f) return "holds a control byte";
    if (c == '/' || c == '[' || c == ']' || c == '*') {
      return std::string("holds '") + static_cast<char>(c) + "'";
    }
  }
  return "";
}

// One piece of a glob's path part: text, '*' (any run), '?' (one byte) or
// a capture {name} (a non-empty run, named).
struct Token {
  enum Kind { kText, kStar, kOne, kCapture } kind = kText;
  std::string text;  // the text, or the capture's name
};

// The tokens of one part of a glob ("{name}.txt"); new capture names are
// added to `captures` (a name twice is a problem).
Result<std::vector<Token>> Tokens(const std::string& part, std::vector<std::string>& captures) {
  std::vector<Token> tokens;
  for (std::size_t k = 0; k < part.size(); ++k) {
    const char c = part[k];
    if (c == '{') {
      const std::size_t close = part.find('}', k);
      const std::string name = close == std::string::npos ? "" : part.substr(k + 1, close - k - 1);
      if (!IsVarName(name) || name == "key" || name == "path") {
        return Status(Code::kInvalidPipeline, "'{" + name +
                                                  "}' is not a capture (letters, digits and "
                                                  "'_', not key or path)");
      }
      if (std::find(captures.begin(), captures.end(), name) != captures.end()) {
        return Status(Code::kInvalidPipeline, "it captures {" + name + "} twice");
      }
      captures.push_back(name);
      tokens.push_back({Token::kCapture, name});
      k = close;
    } else if (c == '*') {
      tokens.push_back({Token::kStar, ""});
    } else if (c == '?') {
      tokens.push_back({Token::kOne, ""});
    } else if (!tokens.empty() && tokens.back().kind == Token::kText) {
      tokens.back().text += c;
    } else {
      tokens.push_back({Token::kText, std::string(1, c)});
    }
  }
  if (tokens.size() > 64) return Status(Code::kInvalidPipeline, "a part has over 64 wildcards");
  return tokens;
}

// Whether `text` (one part of a path) matches `tokens`, the captures' values
// appended to `groups`. Dynamic programming over (token, position): no
// backtracking blow-up; each capture and '*' takes the longest run that
// still lets the rest match (as a greedy regex would).
bool MatchPart(const std::vector<Token>& tokens, std::string_view text,
               std::vector<std::string>& groups) {
  const std::size_t n = text.size(), t_count = tokens.size();
  // ok[t][p]: tokens t.. match text p..
  std::vector<std::vector<char>> ok(t_count + 1, std::vector<char>(n + 1, 0));
  ok[t_count][n] = 1;
  for (std::size_t t = t_count; t-- > 0;) {
    const Token& tok = tokens[t];
    for (std::size_t p = n + 1; p-- > 0;) {
      bool m = false;
      switch (tok.kind) {
        case Token::kText:
          m = text.compare(p, tok.text.size(), tok.text) == 0 && p + tok.text.size() <= n &&
              ok[t + 1][p + tok.text.size()];
          break;
        case Token::kOne:
          m = p < n && ok[t + 1][p + 1];
          break;
        case Token::kStar:
          m = ok[t + 1][p] || (p < n && ok[t][p + 1]);
          break;
        case Token::kCapture:
          m = p < n && (ok[t + 1][p + 1] || ok[t][p + 1]);
          break;
      }
      ok[t][p] = m ? 1 : 0;
    }
  }
  if (!ok[0][0]) return false;
  std::size_t p = 0;
  for (std::size_t t = 0; t < t_count; ++t) {
    const Token& tok = tokens[t];
    if (tok.kind == Token::kText) {
      p += tok.text.size();
    } else if (tok.kind == Token::kOne) {
      ++p;
    } else {
      std::size_t end = n;
      const std::size_t least = tok.kind == Token::kCapture ? p + 1 : p;
      while (end > least && !ok[t + 1][end]) --end;
      if (tok.kind == Token::kCapture) groups.emplace_back(text.substr(p, end - p));
      p = end;
    }
  }
  return true;
}

// A path relative to the glob's folder against its parts, one per '/'.
bool MatchPath(const std::vector<std::vector<Token>>& parts, const std::string& rel,
               std::vector<std::string>& groups) {
  std::size_t start = 0;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const std::size_t slash = rel.find('/', start);
    const bool last = i + 1 == parts.size();
    if (last != (slash == std::string::npos)) return false;
    const std::string_view part(rel.data() + start, (last ? rel.size() : slash) - start);
    if (part.empty() || !MatchPart(parts[i], part, groups)) return false;
    start = slash + 1;
  }
  return true;
}

class ItemReader {
 public:
  ItemReader(const fs::path& base_dir, const std::string& where, const Reader& reader)
      : base_dir_(base_dir), where_(where), r_(reader) {}

  Result<std::vector<Item>> Read(const YAML::Node& foreach) {
    if (!foreach.IsMap() || foreach.size() != 1) {
      return r_.error(foreach.Mark(), where_ +
                                          ": foreach must be one of {list: [...]}, {matrix: "
                                          "{NAME: [...], ...}}, {zip: {NAME: [...], ...}} or "
                                          "{glob: \"dir/{name}.txt\"}");
    }
    const std::string kind = foreach.begin()->first.Scalar();
    const YAML::Node body = foreach.begin()->second;
    Result<std::vector<Item>> items = Status(Code::kInternal, "");
    if (kind == "list") {
      items = List(body);
    } else if (kind == "matrix" || kind == "zip") {
      items = Matrix(body, kind == "zip");
    } else if (kind == "glob") {
      items = Glob(body);
    } else {
      return r_.error(foreach.begin()->first.Mark(),
                      where_ + ": foreach '" + kind + "' is not one of list, matrix, zip, glob");
    }
    if (!items.ok()) return items;
    if (items->empty()) return r_.error(body.Mark(), where_ + ": foreach has no items");
    std::set<std::string> keys;
    for (Item& item : *items) {
      if (std::string why = BadKey(item.key); !why.empty()) {
        return r_.error(body.Mark(), where_ + ": the foreach item key '" + item.key.substr(0, 80) +
                                         "' " + why +
                                         "; a key names a stage instance (NAME[KEY]) and may "
                                         "not hold '/', '[', ']', '*' or control bytes");
      }
      if (!keys.insert(item.key).second) {
        return r_.error(body.Mark(), where_ + ": two foreach items have the key '" + item.key +
                                         "'; each item needs its own");
      }
      item.vars.emplace_back("key", Json(item.key));
    }
    return items;
  }

 private:
  Status TooMany(const YAML::Node& at, std::size_t n) const {
    return r_.error(at.Mark(), where_ + ": foreach makes " + std::to_string(n) +
                                   " items; at most " + std::to_string(kMaxItems) +
                                   " are allowed in one");
  }

  // A record field's or a matrix axis's name: usable as {name}, not 'key'.
  Status CheckName(const YAML::Node& node) const {
    const std::string name = node.Scalar();
    if (IsVarName(name) && name != "key") return OkStatus();
    return r_.error(node.Mark(), where_ + ": '" + name +
                                     "' cannot name a foreach value (letters, digits and '_', "
                                     "not 'key')");
  }

  // A scalar item value (typed as kwargs are), or a problem.
  Result<Json> Scalar(const YAML::Node& node, const std::string& what) const {
    if (!node.IsScalar()) return r_.error(node.Mark(), where_ + ": " + what + " must be a value");
    return r_.to_json(node, where_ + ": " + what);
  }

  // [a, b, c]: {item} and key a; [{x: 1, y: 2}, ...]: {x}, {y} and key "x=1,y=2".
  Result<std::vector<Item>> List(const YAML::Node& list) {
    if (!list.IsSequence()) return r_.error(list.Mark(), where_ + ": foreach list must be a list");
    if (list.size() > kMaxItems) return TooMany(list, list.size());
    std::vector<Item> items;
    for (const YAML::Node& entry : list) {
      Item item;
      if (entry.IsMap()) {
        std::string key;  // a record's own "key", as in an item list
        for (const auto& kv : entry) {
          const std::string name = kv.first.Scalar();
          if (name == "key") {
            auto k = Scalar(kv.second, "the key");
            if (!k.ok()) return k.status();
            key = ValueText(*k);
            continue;
          }
          if (Status s = CheckName(kv.first); !s.ok()) return s;
          auto v = Scalar(kv.second, "the value of '" + name + "'");
          if (!v.ok()) return v.status();
          item.key += (item.key.empty() ? "" : ",") + name + "=" + ValueText(*v);
          item.vars.emplace_back(name, std::move(v).value());
        }
        if (!key.empty()) item.key = key;
        if (item.vars.empty() && key.empty()) {
          return r_.error(entry.Mark(), where_ + ": an empty foreach item");
        }
      } else {
        auto v = Scalar(entry, "a foreach list item");
        if (!v.ok()) return v.status();
        item.key = ValueText(*v);
        item.vars.emplace_back("item", std::move(v).value());
      }
      items.push_back(std::move(item));
    }
    return items;
  }

  // {a: [1, 2], b: [x, y]}: the product (a outermost), or with zip the pairs.
  Result<std::vector<Item>> Matrix(const YAML::Node& matrix, bool zip) {
    const char* kind = zip ? "zip" : "matrix";
    if (!matrix.IsMap() || matrix.size() == 0) {
      return r_.error(matrix.Mark(), where_ + ": foreach " + kind +
                                         " must map names to lists, e.g. {lr: [0.1, 0.01]}");
    }
    std::vector<std::pair<std::string, std::vector<Json>>> axes;
    std::size_t total = 1;
    for (const auto& kv : matrix) {
      const std::string name = kv.first.Scalar();
      if (Status s = CheckName(kv.first); !s.ok()) return s;
      if (!kv.second.IsSequence() || kv.second.size() == 0) {
        return r_.error(kv.second.Mark(),
                        where_ + ": foreach " + kind + " '" + name + "' must be a non-empty list");
      }
      std::vector<Json> values;
      for (const YAML::Node& v : kv.second) {
        auto value = Scalar(v, "a value of '" + name + "'");
        if (!value.ok()) return value.status();
        values.push_back(std::move(value).value());
      }
      if (zip && !axes.empty() && values.size() != axes.front().second.size()) {
        return r_.error(kv.second.Mark(), where_ + ": foreach zip pairs lists of one length: '" +
                                              name + "' has " + std::to_string(values.size()) +
                                              ", '" + axes.front().first + "' has " +
                                              std::to_string(axes.front().second.size()));
      }
      total = zip ? values.size() : total * values.size();
      if (total > kMaxItems) return TooMany(kv.second, total);
      axes.emplace_back(name, std::move(values));
    }
    std::vector<Item> items;
    items.reserve(total);
    for (std::size_t n = 0; n < total; ++n) {
      Item item;
      std::size_t rest = n;
      std::vector<std::size_t> at(axes.size());
      for (std::size_t a = axes.size(); a-- > 0;) {  // the last axis varies fastest
        at[a] = zip ? n : rest % axes[a].second.size();
        if (!zip) rest /= axes[a].second.size();
      }
      for (std::size_t a = 0; a < axes.size(); ++a) {
        const Json& v = axes[a].second[at[a]];
        item.key += (item.key.empty() ? "" : ",") + axes[a].first + "=" + ValueText(v);
        item.vars.emplace_back(axes[a].first, v);
      }
      items.push_back(std::move(item));
    }
    return items;
  }

  // "corpus/{name}.txt": files whose path matches, '{name}' capturing one
  // part of a path (no '/'), '*' any run of a part, '?' one byte.
  Result<std::vector<Item>> Glob(const YAML::Node& node) {
    if (!node.IsScalar() || node.Scalar().empty()) {
      return r_.error(node.Mark(), where_ + ": foreach glob must be a path pattern");
    }
    const std::string pattern = node.Scalar();
    const fs::path full = fs::path(pattern).is_absolute() ? fs::path(pattern) : base_dir_ / pattern;
    // The folder to walk: the parts before the first one with a wildcard.
    fs::path dir = full.root_path();
    std::vector<std::string> rest;
    bool wild = false;
    for (const fs::path& part : full.relative_path()) {
      const std::string s = part.string();
      wild = wild || s.find_first_of("{*?") != std::string::npos;
      if (wild) {
        rest.push_back(s);
      } else {
        dir /= part;
      }
    }
    if (rest.empty()) {
      return r_.error(node.Mark(), where_ + ": foreach glob '" + pattern +
                                       "' has no capture; write one such as {name} where the "
                                       "item's name is");
    }
    std::vector<std::vector<Token>> parts;
    std::vector<std::string> captures;
    for (const std::string& part : rest) {
      auto tokens = Tokens(part, captures);
      if (!tokens.ok()) {
        return r_.error(node.Mark(),
                        where_ + ": foreach glob '" + pattern + "': " + tokens.status().message());
      }
      parts.push_back(std::move(tokens).value());
    }
    if (captures.empty()) {
      return r_.error(node.Mark(), where_ + ": foreach glob '" + pattern +
                                       "' has no capture; write one such as {name} where the "
                                       "item's name is");
    }
    std::vector<std::pair<std::string, std::vector<std::string>>> found;  // relative path, groups
    std::size_t seen = 0;
    std::error_code ec;
    const auto options = fs::directory_options::skip_permission_denied;
    for (fs::recursive_directory_iterator it(dir, options, ec), end; !ec && it != end;
         it.increment(ec)) {
      if (++seen > kMaxGlobEntries) {
        return r_.error(node.Mark(), where_ + ": foreach glob '" + pattern + "' looked at " +
                                         std::to_string(kMaxGlobEntries) + " entries of " +
                                         dir.string() + " without finishing; narrow it");
      }
      if (static_cast<std::size_t>(it.depth()) + 1 >= rest.size()) it.disable_recursion_pending();
      std::error_code fec;
      if (!it->is_regular_file(fec)) continue;
      const std::string rel = it->path().lexically_relative(dir).generic_string();
      std::vector<std::string> groups;
      if (MatchPath(parts, rel, groups)) found.emplace_back(rel, std::move(groups));
      if (found.size() > kMaxItems) return TooMany(node, found.size());
    }
    if (found.empty()) {
      return r_.error(node.Mark(), where_ + ": foreach glob '" + pattern + "' matches no file" +
                                       " (looked in " + dir.string() + ")");
    }
    std::sort(found.begin(), found.end());
    std::vector<Item> items;
    for (const auto& [rel, groups] : found) {
      Item item;
      for (std::size_t c = 0; c < captures.size(); ++c) {
        const std::string& value = groups[c];
        item.key += captures.size() == 1
                        ? value
                        : (item.key.empty() ? "" : ",") + captures[c] + "=" + value;
        item.vars.emplace_back(captures[c], Json(value));
      }
      item.vars.emplace_back("path", Json((dir / rel).string()));
      items.push_back(std::move(item));
    }
    return items;
  }

  const fs::path& base_dir_;
  const std::string& where_;
  const Reader& r_;
};

// One line of an item list: an object of scalars or one scalar, parsed
// without building anything nested deeper (a line of 60,000 '[' costs
// nothing).
Result<Item> JsonLineItem(std::string_view line) {
  bool nested = false;
  nlohmann::ordered_json::parser_callback_t flat =
      [&](int depth, nlohmann::ordered_json::parse_event_t, nlohmann::ordered_json&) {
        if (depth > 1) nested = true;
        return depth <= 1;
      };
  nlohmann::ordered_json v = nlohmann::ordered_json::parse(line, flat, false);
  if (v.is_discarded()) return Status(Code::kInvalidPipeline, "the line is not JSON");
  auto scalar = [](const nlohmann::ordered_json& x) {
    return x.is_string() || x.is_number() || x.is_boolean();
  };
  // The same value in the item's JSON type, without a text round trip.
  auto plain = [](const nlohmann::ordered_json& x) -> Json {
    if (x.is_string()) return x.get<std::string>();
    if (x.is_boolean()) return x.get<bool>();
    if (x.is_number_unsigned()) return x.get<std::uint64_t>();
    if (x.is_number_integer()) return x.get<std::int64_t>();
    return x.get<double>();
  };
  if (nested) {
    return Status(Code::kInvalidPipeline,
                  "the item nests a list or an object; its fields must be strings, numbers or "
                  "booleans");
  }
  Item item;
  if (v.is_object()) {
    std::string key;
    for (const auto& [name, value] : v.items()) {
      if (!scalar(value)) {
        return Status(Code::kInvalidPipeline, "the item's field '" + name.substr(0, 80) +
                                                  "' is not a string, number or boolean");
      }
      Json j = plain(value);
      if (name == "key") {
        key = ValueText(j);
        continue;
      }
      if (!IsVarName(name)) {
        return Status(Code::kInvalidPipeline, "the item's field '" + name.substr(0, 80) +
                                                  "' cannot name a foreach value (letters, "
                                                  "digits and '_')");
      }
      item.key += (item.key.empty() ? "" : ",") + name + "=" + ValueText(j);
      item.vars.emplace_back(name, std::move(j));
    }
    if (item.vars.empty() && key.empty())
      return Status(Code::kInvalidPipeline, "the item is empty");
    if (!key.empty()) item.key = key;
    return item;
  }
  if (!scalar(v)) {
    return Status(Code::kInvalidPipeline,
                  "the line is not an item: write one JSON object of strings, numbers and booleans "
                  "({\"start\": 0, \"end\": 4096}) or one such value per line");
  }
  Json j = plain(v);
  item.key = ValueText(j);
  item.vars.emplace_back("item", std::move(j));
  return item;
}

}  // namespace

Result<std::vector<Item>> JsonLinesItems(std::string_view text, std::vector<std::size_t>& lines) {
  std::vector<Item> items;
  std::size_t line_no = 0;
  for (std::size_t at = 0; at < text.size();) {
    std::size_t end = text.find('\n', at);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(at, end - at);
    at = end + 1;
    ++line_no;
    auto problem = [&](const std::string& why) {
      return Status(Code::kInvalidPipeline, std::to_string(line_no) + ": " + why);
    };
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    if (line.size() > kMaxItemLineBytes) {
      return problem("the line is over " + std::to_string(kMaxItemLineBytes) + " bytes");
    }
    if (items.size() == kMaxItems) {
      return problem("more than " + std::to_string(kMaxItems) + " items; at most " +
                     std::to_string(kMaxItems) + " are allowed in one foreach");
    }
    auto item = JsonLineItem(line);
    if (!item.ok()) return problem(item.status().message());
    if (std::string why = BadKey(item->key); !why.empty()) {
      return problem("the item key '" + item->key.substr(0, 80) + "' " + why +
                     "; a key names a stage instance (NAME[KEY]) and may not hold '/', '[', "
                     "']', '*' or control bytes: give the item a shorter \"key\"");
    }
    item->vars.emplace_back("key", Json(item->key));
    items.push_back(std::move(item).value());
    lines.push_back(line_no);
  }
  // Keys are checked once all are read: string_views into the items' keys.
  std::map<std::string_view, std::size_t> seen;
  for (std::size_t k = 0; k < items.size(); ++k) {
    auto [it, fresh] = seen.emplace(items[k].key, lines[k]);
    if (!fresh) {
      return Status(Code::kInvalidPipeline,
                    std::to_string(lines[k]) + ": the item key '" + items[k].key +
                        "' is the key of line " + std::to_string(it->second) +
                        " too; each item needs its own (add a \"key\" field)");
    }
  }
  return items;
}

const Json* Item::Find(std::string_view name) const {
  for (const auto& [n, v] : vars) {
    if (n == name) return &v;
  }
  return nullptr;
}

Result<std::vector<Item>> Items(const YAML::Node& foreach, const fs::path& base_dir,
                                const std::string& where, const Reader& reader) {
  return ItemReader(base_dir, where, reader).Read(foreach);
}

Result<std::string> Substitute(std::string_view text, const Item& item) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '{') {
      const std::size_t close = text.find('}', i);
      if (close != std::string_view::npos) {
        const std::string_view name = text.substr(i + 1, close - i - 1);
        if (IsVarName(name)) {
          const Json* v = item.Find(name);
          if (v == nullptr) {
            std::string defined;
            for (const auto& [n, value] : item.vars) defined += (defined.empty() ? "" : ", ") + n;
            return Status(Code::kInvalidPipeline, "'{" + std::string(name) +
                                                      "}' is not defined by the stage's foreach "
                                                      "(it defines " +
                                                      defined + ")");
          }
          out += ValueText(*v);
          i = close;
          continue;
        }
      }
    }
    out += text[i];
  }
  return out;
}

const Json* WholeValue(std::string_view text, const Item& item) {
  if (text.size() < 3 || text.front() != '{' || text.back() != '}') return nullptr;
  const std::string_view name = text.substr(1, text.size() - 2);
  return IsVarName(name) ? item.Find(name) : nullptr;
}

}  // namespace stagekit::fanout
