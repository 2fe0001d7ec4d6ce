// Map-reduce word count.
//   wordcount.map    input `text`: counts words, writes "word\tcount\n" sorted by word.
//                    kwargs: min_length (default 1); start, end (bytes of `text`
//                    to count, default all of it)
//   wordcount.split  input `text`: an item list (JSON Lines) of chunks of
//                    about chunk_bytes (kwarg, default 65536) ending at line
//                    ends: {"key": "0007", "start": 28672, "end": 32768}. The
//                    number of chunks depends on the text: for a dynamic
//                    foreach (examples/dynamic).
//   wordcount.reduce any number of map outputs: merges them, writes
//                    "count\tword\n" by descending count, then word.
//                    kwargs: top (default 0 = all)
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "stagekit/stage.h"

namespace {

using Counts = std::map<std::string, std::uint64_t>;

void Map(stagekit::StageContext& ctx) {
  std::string text = ctx.ReadInput("text");
  const std::size_t min_length = ctx.kwargs().value("min_length", 1);
  const std::uint64_t start = ctx.kwargs().value("start", std::uint64_t{0});
  const std::uint64_t end = ctx.kwargs().value("end", std::uint64_t{text.size()});
  if (start > end || end > text.size()) {
    throw std::invalid_argument("bytes " + std::to_string(start) + " to " + std::to_string(end) +
                                " are not within the text's " + std::to_string(text.size()));
  }
  text = text.substr(start, end - start);
  Counts counts;
  std::string word;
  std::uint64_t total = 0;
  auto flush = [&] {
    // Trim apostrophes at the ends ("'tis" stays "tis", "dogs'" becomes "dogs").
    std::size_t b = word.find_first_not_of('\'');
    std::size_t e = word.find_last_not_of('\'');
    if (b != std::string::npos && e - b + 1 >= min_length) {
      ++counts[word.substr(b, e - b + 1)];
      ++total;
    }
    word.clear();
  };
  for (unsigned char c : text) {
    // ASCII only, on purpose: no locale can change the result.
    if ((c >= 'a' && c <= 'z') || c == '\'') {
      word.push_back(static_cast<char>(c));
    } else if (c >= 'A' && c <= 'Z') {
      word.push_back(static_cast<char>(c - 'A' + 'a'));
    } else {
      flush();
    }
  }
  flush();
  std::string out;
  for (const auto& [w, n] : counts) out += w + "\t" + std::to_string(n) + "\n";
  ctx.WriteOutput(out);
  ctx.SetMetric("words", total);
  ctx.SetMetric("distinct", counts.size());
}

void Split(stagekit::StageContext& ctx) {
  const std::string text = ctx.ReadInput("text");
  const std::uint64_t chunk = ctx.kwargs().value("chunk_bytes", std::uint64_t{65536});
  if (chunk == 0) throw std::invalid_argument("chunk_bytes must be at least 1");
  std::string out;
  std::size_t n = 0;
  for (std::size_t start = 0; start < text.size(); ++n) {
    std::size_t end = std::min<std::size_t>(text.size(), start + chunk);
    // Never split a word: end after the next line end (or at the text's end).
    const std::size_t nl = text.find('\n', end == 0 ? 0 : end - 1);
    end = nl == std::string::npos ? text.size() : nl + 1;
    char key[16];
    std::snprintf(key, sizeof key, "%04zu", n);
    out += "{\"key\": \"" + std::string(key) + "\", \"start\": " + std::to_string(start) +
           ", \"end\": " + std::to_string(end) + "}\n";
    start = end;
  }
  ctx.WriteOutput(out);
  ctx.SetMetric("chunks", n);
}

void Reduce(stagekit::StageContext& ctx) {
  if (ctx.inputs().empty())
    throw std::invalid_argument("wordcount.reduce needs at least one input");
  Counts counts;
  // inputs() is ordered by input name, so the merge order is fixed.
  for (const auto& [name, path] : ctx.inputs()) {
    std::istringstream lines(ctx.ReadInput(name));
    std::string line;
    while (std::getline(lines, line)) {
      std::size_t tab = line.find('\t');
      if (tab == std::string::npos) {
        throw std::runtime_error("input '" + name + "' is not word\\tcount lines: " + line);
      }
      counts[line.substr(0, tab)] += std::stoull(line.substr(tab + 1));
    }
  }
  std::vector<std::pair<std::uint64_t, std::string>> ranked;
  ranked.reserve(counts.size());
  for (const auto& [w, n] : counts) ranked.emplace_back(n, w);
  std::sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  const std::size_t top = ctx.kwargs().value("top", 0);
  if (top > 0 && ranked.size() > top) ranked.resize(top);
  std::string out;
  for (const auto& [n, w] : ranked) out += std::to_string(n) + "\t" + w + "\n";
  ctx.WriteOutput(out);
  ctx.SetMetric("distinct", counts.size());
}

}  // namespace

STAGEKIT_STAGE("wordcount.map", Map);
STAGEKIT_STAGE("wordcount.reduce", Reduce);
STAGEKIT_STAGE("wordcount.split", Split);
