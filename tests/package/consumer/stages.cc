// Stages of the find_package consumer test: built as a stage library with the
// installed stagekit_add_stage_library() helper and loaded by the installed
// `stagekit` binary.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <stagekit/stage.h>
#include <zlib.h>

namespace {

// Input `in` with its lines in reverse order. Every output line ends in '\n'
// (a last line without one gets one), so the result equals `tac` for files
// that end in a newline.
void ReverseLines(stagekit::StageContext& ctx) {
  const std::string text = ctx.ReadInput("in");
  std::vector<std::string_view> lines;
  std::string_view rest(text);
  while (!rest.empty()) {
    std::size_t nl = rest.find('\n');
    std::size_t len = nl == std::string_view::npos ? rest.size() : nl;
    lines.push_back(rest.substr(0, len));
    rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
  }
  std::string out;
  out.reserve(text.size() + 1);
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    out.append(it->data(), it->size());
    out.push_back('\n');
  }
  ctx.SetMetric("lines", lines.size());
  // zlib's CRC-32 of the input, as a metric (the outputs stay zlib-free).
  ctx.SetMetric("crc32", crc32(0L, reinterpret_cast<const Bytef*>(text.data()),
                               static_cast<uInt>(text.size())));
  ctx.WriteOutput(out);
}

// The POSIX `cksum` CRC of input `in` (polynomial 0x04C11DB7, MSB first, the
// length appended least significant byte first, result complemented), written
// as "<crc> <bytes>\n" exactly like `cksum < file` prints it, so the test can
// check it with an independent tool.
std::uint32_t PosixCksum(std::string_view data) {
  std::uint32_t crc = 0;
  auto feed = [&crc](unsigned char byte) {
    crc ^= static_cast<std::uint32_t>(byte) << 24;
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc & 0x80000000u) != 0 ? (crc << 1) ^ 0x04C11DB7u : crc << 1;
    }
  };
  for (char c : data) feed(static_cast<unsigned char>(c));
  for (std::uint64_t n = data.size(); n != 0; n >>= 8) feed(static_cast<unsigned char>(n & 0xFF));
  return ~crc;
}

void Checksum(stagekit::StageContext& ctx) {
  const std::string text = ctx.ReadInput("in");
  ctx.WriteOutput(std::to_string(PosixCksum(text)) + " " + std::to_string(text.size()) + "\n");
}

}  // namespace

STAGEKIT_STAGE("consumer.reverse_lines", ReverseLines);
STAGEKIT_STAGE("consumer.checksum", Checksum);
