#include "files.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <random>

#include "fd.h"
#include "stagekit/invoke.h"

namespace stagekit::internal {

namespace fs = std::filesystem;

fs::path UniqueTemp(const fs::path& target) {
  static std::atomic<unsigned long> serial{0};
  static const unsigned long salt = std::random_device{}();
  return target.parent_path() / ("." + target.filename().string() + ".tmp-" + HostName() + "-" +
                                 std::to_string(::getpid()) + "-" + std::to_string(salt % 100000) +
                                 "-" + std::to_string(serial++));
}

bool IsTempName(const std::string& name) {
  return !name.empty() && name[0] == '.' && name.find(".tmp-") != std::string::npos;
}

Status WriteAllFd(int fd, const char* data, std::size_t size, const fs::path& path) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status(Code::kOutputError,
                    "cannot write " + path.string() + ": " + std::strerror(errno));
    }
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  return OkStatus();
}

Status WriteFileAtomically(const fs::path& path, std::string_view text) {
  const fs::path tmp = UniqueTemp(path);
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!fd) {
    return Status(Code::kOutputError,
                  "cannot create " + tmp.string() + ": " + std::strerror(errno));
  }
  Status s = WriteAllFd(fd.get(), text.data(), text.size(), tmp);
  if (::close(fd.Release()) != 0 && s.ok()) {
    s = Status(Code::kOutputError, "cannot write " + tmp.string() + ": " + std::strerror(errno));
  }
  std::error_code ec;
  if (s.ok()) {
    fs::rename(tmp, path, ec);
    if (ec) s = Status(Code::kOutputError, "cannot write " + path.string() + ": " + ec.message());
  }
  if (!s.ok()) fs::remove(tmp, ec);
  return s;
}

}  // namespace stagekit::internal
