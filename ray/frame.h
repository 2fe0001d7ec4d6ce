// The frame a Ray stage task returns: "SKR1", the 4-byte little-endian length
// of a status JSON (the stage's RunStats or an error), that JSON, then the
// output bytes. Encoder and decoder in one place, with no Ray dependency, so
// that the decoder can be fuzzed (tests/fuzz/frame_fuzz.cc) without a
// cluster. Header-only: the bridge is built with Ray's ABI flags.
#ifndef STAGEKIT_RAY_FRAME_H_
#define STAGEKIT_RAY_FRAME_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace stagekit::frame {

inline constexpr char kMagic[4] = {'S', 'K', 'R', '1'};
// What the header task keeps of an object that is not a frame.
inline constexpr std::size_t kForeignHeadBytes = 64 << 10;

// A frame holding `status` and no output bytes yet (they go after it).
inline std::vector<char> Encode(const std::string& status) {
  std::vector<char> frame(8 + status.size());
  std::memcpy(frame.data(), kMagic, sizeof(kMagic));
  const auto n = static_cast<std::uint32_t>(status.size());
  for (int i = 0; i < 4; ++i) frame[4 + i] = static_cast<char>((n >> (8 * i)) & 0xff);
  if (!status.empty()) std::memcpy(frame.data() + 8, status.data(), status.size());
  return frame;
}

// The size of a frame's header (magic, length, status JSON), or 0 when the
// `size` bytes at `data` are not a frame (wrong magic, or a length field
// that runs past them). Never reads past `size`.
inline std::size_t HeaderSize(const char* data, std::size_t size) {
  if (size < 8 || std::memcmp(data, kMagic, 4) != 0) return 0;
  std::uint32_t n = 0;
  for (int i = 0; i < 4; ++i)
    n |= static_cast<std::uint32_t>(static_cast<unsigned char>(data[4 + i])) << (8 * i);
  return n <= size - 8 ? 8 + static_cast<std::size_t>(n) : 0;
}

// What the header task keeps of an object: a frame's header, or the first
// kForeignHeadBytes of anything else (a Ray error decoded as a value).
inline std::vector<char> KeepHead(const char* data, std::size_t size) {
  std::size_t keep = HeaderSize(data, size);
  if (keep == 0) keep = std::min(size, kForeignHeadBytes);
  return std::vector<char>(data, data + keep);
}

}  // namespace stagekit::frame

#endif  // STAGEKIT_RAY_FRAME_H_
