// SHA-256 (stagekit's digests) and SHA-1 (Ray's package hash), through
// nettle, kept out of the public headers: the one place nettle is called.
#ifndef STAGEKIT_UTIL_DIGEST_H_
#define STAGEKIT_UTIL_DIGEST_H_

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "stagekit/status.h"

namespace stagekit {
class CancelFlag;
}  // namespace stagekit

namespace stagekit::util {

using Sha256Digest = std::array<std::uint8_t, 32>;

Sha256Digest Sha256(std::string_view bytes);
// Incremental: Update() as the bytes pass, Final() once.
class Sha256Stream {
 public:
  Sha256Stream();
  ~Sha256Stream();
  Sha256Stream(const Sha256Stream&) = delete;
  Sha256Stream& operator=(const Sha256Stream&) = delete;
  void Update(std::string_view bytes);
  Sha256Digest Final();

 private:
  struct Ctx;
  Ctx* ctx_;
};
std::string HexDigest(const Sha256Digest& digest);

using Sha1Digest = std::array<std::uint8_t, 20>;
class Sha1Stream {
 public:
  Sha1Stream();
  ~Sha1Stream();
  Sha1Stream(const Sha1Stream&) = delete;
  Sha1Stream& operator=(const Sha1Stream&) = delete;
  void Update(std::string_view bytes);
  Sha1Digest Final();

 private:
  struct Ctx;
  Ctx* ctx_;
};
Sha1Digest Sha1(std::string_view bytes);
// Digest and size of what an open descriptor holds from its current offset to
// the end; kInputError naming `path` on I/O errors, kInterrupted when
// `cancel` is set (checked between 64 KiB blocks: a 10 GB input takes
// seconds to hash, and Ctrl-C must not wait for it).
Result<std::pair<Sha256Digest, std::uint64_t>> Sha256Fd(int fd, const std::filesystem::path& path,
                                                        const CancelFlag* cancel = nullptr);

}  // namespace stagekit::util

#endif  // STAGEKIT_UTIL_DIGEST_H_
