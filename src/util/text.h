// Small text helpers shared by the library and the command line's back ends:
// one home for each (hex, shell quoting, sizes, durations, times).
#ifndef STAGEKIT_UTIL_TEXT_H_
#define STAGEKIT_UTIL_TEXT_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace stagekit::util {

// Lower-case hex of `size` bytes (inline: the Ray bridge, built with the old
// std::string ABI, uses it too).
inline std::string Hex(const void* data, std::size_t size) {
  constexpr char kDigits[] = "0123456789abcdef";
  const auto* bytes = static_cast<const unsigned char*>(data);
  std::string out;
  out.reserve(2 * size);
  for (std::size_t i = 0; i < size; ++i) {
    out.push_back(kDigits[bytes[i] >> 4]);
    out.push_back(kDigits[bytes[i] & 15]);
  }
  return out;
}
inline std::string Hex(std::string_view bytes) { return Hex(bytes.data(), bytes.size()); }

// `bytes` random bytes from the kernel (getrandom), in hex.
std::string RandomHex(std::size_t bytes);

// A word for `sh -c`: unchanged when it has only safe characters, else in
// single quotes ('\'' for a quote inside).
std::string ShellQuote(const std::string& word);

// The offset of the first byte of `text` that is not well-formed UTF-8
// (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF), or
// npos when all of it is. stagekit's names, paths and kwargs travel as JSON,
// which is UTF-8: text that is not is refused where it enters, with this.
std::size_t InvalidUtf8At(std::string_view text);
// "LINE:COLUMN" (both from 1, the column in bytes) of `offset` in `text`.
std::string LineColumn(std::string_view text, std::size_t offset);

// Whether `text` matches `pattern`, where '*' matches any run of bytes (and
// nothing else is special). Iterative: linear in practice, no recursion.
bool WildMatch(std::string_view pattern, std::string_view text);

// "512 B", "1.5 KiB", "3.0 GiB".
std::string HumanBytes(std::uint64_t bytes);

// `text` without leading and trailing white space.
std::string Trim(std::string_view text);

// A duration as a person writes it: "250ms", "2s", "1.5s", "5m", "1h".
std::string FormatMs(std::chrono::milliseconds ms);

// UTC, to the second: "2026-06-01T12:00:00Z".
std::string IsoTime(std::chrono::system_clock::time_point t);

}  // namespace stagekit::util

#endif  // STAGEKIT_UTIL_TEXT_H_
