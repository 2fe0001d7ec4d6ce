#include "util/digest.h"

#include "stagekit/executor.h"

#include <nettle/sha1.h>
#include <nettle/sha2.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/text.h"

namespace stagekit::util {

Sha256Digest Sha256(std::string_view bytes) {
  sha256_ctx ctx;
  sha256_init(&ctx);
  sha256_update(&ctx, bytes.size(), reinterpret_cast<const std::uint8_t*>(bytes.data()));
  Sha256Digest out;
  sha256_digest(&ctx, out.size(), out.data());
  return out;
}

struct Sha256Stream::Ctx {
  sha256_ctx ctx;
};

Sha256Stream::Sha256Stream() : ctx_(new Ctx) { sha256_init(&ctx_->ctx); }
Sha256Stream::~Sha256Stream() { delete ctx_; }
void Sha256Stream::Update(std::string_view bytes) {
  sha256_update(&ctx_->ctx, bytes.size(), reinterpret_cast<const std::uint8_t*>(bytes.data()));
}
Sha256Digest Sha256Stream::Final() {
  Sha256Digest out;
  sha256_digest(&ctx_->ctx, out.size(), out.data());
  return out;
}

std::string HexDigest(const Sha256Digest& digest) { return Hex(digest.data(), digest.size()); }

struct Sha1Stream::Ctx {
  sha1_ctx ctx;
};

Sha1Stream::Sha1Stream() : ctx_(new Ctx) { sha1_init(&ctx_->ctx); }
Sha1Stream::~Sha1Stream() { delete ctx_; }
void Sha1Stream::Update(std::string_view bytes) {
  sha1_update(&ctx_->ctx, bytes.size(), reinterpret_cast<const std::uint8_t*>(bytes.data()));
}
Sha1Digest Sha1Stream::Final() {
  Sha1Digest out;
  sha1_digest(&ctx_->ctx, out.size(), out.data());
  return out;
}

Sha1Digest Sha1(std::string_view bytes) {
  Sha1Stream s;
  s.Update(bytes);
  return s.Final();
}

Result<std::pair<Sha256Digest, std::uint64_t>> Sha256Fd(int fd, const std::filesystem::path& path,
                                                        const CancelFlag* cancel) {
  sha256_ctx ctx;
  sha256_init(&ctx);
  std::uint64_t total = 0;
  std::uint8_t buf[1 << 16];
  for (;;) {
    if (Cancelled(cancel)) {
      return Status(Code::kInterrupted, "interrupted while hashing '" + path.string() + "'");
    }
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status(Code::kInputError,
                    "cannot read '" + path.string() + "': " + std::strerror(errno));
    }
    if (n == 0) break;
    sha256_update(&ctx, static_cast<std::size_t>(n), buf);
    total += static_cast<std::uint64_t>(n);
  }
  Sha256Digest out;
  sha256_digest(&ctx, out.size(), out.data());
  return std::make_pair(out, total);
}

}  // namespace stagekit::util
