#include "util/files.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>

#include "stagekit/status.h"

namespace stagekit::util {

namespace fs = std::filesystem;

const std::string& HostName() {
  static const std::string host = [] {
    char buf[256] = {};
    if (::gethostname(buf, sizeof(buf) - 1) != 0) return std::string("unknown");
    return std::string(buf);
  }();
  return host;
}

namespace {

constexpr std::string_view kTempPrefix = ".stagekit-tmp.";

std::string Errno() { return std::strerror(errno); }

std::uint64_t RandomBits() {
  std::uint64_t v = 0;
  if (::getrandom(&v, sizeof v, 0) == static_cast<ssize_t>(sizeof v)) return v;
  static thread_local std::mt19937_64 fallback{std::random_device{}()};
  return fallback();
}

// Host names may hold anything a file name may not; keep the usual letters.
std::string SafeHost() {
  std::string host = HostName();
  for (char& c : host) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '.' || c == '_';
    if (!ok) c = '_';
  }
  if (host.size() > 64) host.resize(64);
  return host.empty() ? "unknown" : host;
}

// The pid and host of a temp name of the current format.
bool ParseTempName(std::string_view name, long* pid, std::string* host) {
  if (name.substr(0, kTempPrefix.size()) != kTempPrefix) return false;
  name.remove_prefix(kTempPrefix.size());
  const std::size_t dot1 = name.find('.');
  if (dot1 == std::string_view::npos || dot1 == 0 || dot1 > 10) return false;
  const std::size_t dot2 = name.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos) return false;
  long p = 0;
  for (char c : name.substr(0, dot1)) {
    if (c < '0' || c > '9') return false;
    p = p * 10 + (c - '0');
  }
  *pid = p;
  *host = std::string(name.substr(dot2 + 1));
  return true;
}

}  // namespace

fs::path TempNameIn(const fs::path& dir) {
  char random[17];
  std::snprintf(random, sizeof random, "%016llx", static_cast<unsigned long long>(RandomBits()));
  return dir /
         (std::string(kTempPrefix) + std::to_string(::getpid()) + "." + random + "." + SafeHost());
}

bool IsTempName(const std::string& name) {
  if (name.empty() || name[0] != '.') return false;
  if (name.rfind(kTempPrefix, 0) == 0) return true;
  // Older formats: ".<name>.tmp-<host>-..." and ".<name>.stagekit-<pid>-<n>.tmp".
  if (name.find(".tmp-") != std::string::npos) return true;
  return name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0 &&
         name.find(".stagekit-") != std::string::npos;
}

bool IsStaleTemp(const std::string& name, std::chrono::system_clock::time_point mtime,
                 std::chrono::seconds max_age) {
  if (!IsTempName(name)) return false;
  long pid = 0;
  std::string host;
  if (ParseTempName(name, &pid, &host) && host == SafeHost()) {
    if (pid == ::getpid()) return false;
    return pid <= 0 || (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH);
  }
  return std::chrono::system_clock::now() - mtime > max_age;
}

std::size_t RemoveStaleTemps(const fs::path& dir) {
  std::size_t removed = 0;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!IsTempName(name)) continue;
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) != 0) continue;
    const auto mtime = std::chrono::system_clock::time_point(
        std::chrono::duration_cast<std::chrono::system_clock::duration>(
            std::chrono::seconds(st.st_mtim.tv_sec) +
            std::chrono::nanoseconds(st.st_mtim.tv_nsec)));
    if (!IsStaleTemp(name, mtime)) continue;
    std::error_code rec;
    if (fs::remove_all(it->path(), rec) > 0 && !rec) ++removed;
  }
  return removed;
}

Result<std::pair<UniqueFd, fs::path>> CreateTempBeside(const fs::path& target, mode_t mode) {
  fs::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  for (int tries = 0;; ++tries) {
    fs::path tmp = TempNameIn(dir);
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
    if (fd) return std::make_pair(std::move(fd), std::move(tmp));
    if (errno != EEXIST || tries >= 8) {
      return Status(Code::kOutputError, "cannot create a temporary file in " + dir.string() +
                                            " (for " + target.string() + "): " + Errno());
    }
  }
}

Result<fs::path> MakePrivateDir(const fs::path& dir) {
  for (int tries = 0;; ++tries) {
    fs::path tmp = TempNameIn(dir.empty() ? fs::path(".") : dir);
    if (::mkdir(tmp.c_str(), 0700) == 0) return tmp;
    if (errno != EEXIST || tries >= 8) {
      return Status(Code::kOutputError,
                    "cannot create a temporary folder in " + dir.string() + ": " + Errno());
    }
  }
}

Status CheckReplaceable(const fs::path& to, const std::string& what) {
  struct stat st {};
  if (::lstat(to.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    const char* kind = S_ISDIR(st.st_mode)    ? "a folder"
                       : S_ISLNK(st.st_mode)  ? "a symbolic link"
                       : S_ISCHR(st.st_mode)  ? "a character device"
                       : S_ISBLK(st.st_mode)  ? "a block device"
                       : S_ISFIFO(st.st_mode) ? "a FIFO"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                                              : "not a regular file";
    return Status(Code::kOutputError, what + ": '" + to.string() + "' exists and is " + kind +
                                          "; stagekit replaces only regular files: remove it or "
                                          "choose another --out");
  }
  return OkStatus();
}

Status PublishFile(const fs::path& from, const fs::path& to, const std::string& what) {
  if (Status s = CheckReplaceable(to, what); !s.ok()) return s;
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return Status(Code::kOutputError,
                  what + ": cannot move it into place at '" + to.string() + "': " + Errno());
  }
  return OkStatus();
}

Status WriteAllFd(int fd, const char* data, std::size_t size, const fs::path& path) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status(Code::kOutputError, "cannot write " + path.string() + ": " + Errno());
    }
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  return OkStatus();
}

Status WriteFileAtomically(const fs::path& path_in, std::string_view text) {
  fs::path path = path_in;
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
    std::error_code ec;
    fs::path resolved = fs::weakly_canonical(path, ec);
    if (ec) {
      return Status(Code::kOutputError,
                    "cannot write " + path.string() + ": cannot resolve its link: " + ec.message());
    }
    path = resolved;
  }
  if (::lstat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    if (S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode)) {
      // A device or a pipe has no content to keep: write through it.
      UniqueFd fd(::open(path.c_str(), O_WRONLY | O_NOCTTY | O_CLOEXEC));
      if (!fd) return Status(Code::kOutputError, "cannot write " + path.string() + ": " + Errno());
      return WriteAllFd(fd.get(), text.data(), text.size(), path);
    }
    return Status(Code::kOutputError, "cannot write " + path.string() +
                                          ": it exists and is not a regular file, a character "
                                          "device or a FIFO; choose another path");
  }
  auto made = CreateTempBeside(path);
  if (!made.ok()) return made.status();
  auto& [fd, tmp] = *made;
  Status s = WriteAllFd(fd.get(), text.data(), text.size(), tmp);
  if (::close(fd.Release()) != 0 && s.ok()) {
    s = Status(Code::kOutputError, "cannot write " + tmp.string() + ": " + Errno());
  }
  if (s.ok()) s = PublishFile(tmp, path, "cannot write " + path.string());
  if (!s.ok()) {
    std::error_code ec;
    fs::remove(tmp, ec);
  }
  return s;
}

Result<std::string> ReadFile(const fs::path& path, std::uint64_t max_bytes) {
  auto read = ReadFileIfExists(path, max_bytes);
  if (!read.ok()) return read.status();
  if (!*read)
    return Status(Code::kInputError,
                  "cannot read '" + path.string() + "': " + std::strerror(ENOENT));
  return std::move(**read);
}

Result<std::optional<std::string>> ReadFileIfExists(const fs::path& path, std::uint64_t max_bytes) {
  // O_NONBLOCK: opening a FIFO with no writer must not hang (reading it then
  // ends at once). Regular files and FIFOs (`--token-file <(...)`) are read,
  // within max_bytes; devices are refused (/dev/tty would wait for a person).
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (!fd && (errno == ENOENT || errno == ENOTDIR)) return std::optional<std::string>();
  struct stat st {};
  if (!fd || ::fstat(fd.get(), &st) != 0) {
    return Status(Code::kInputError,
                  "cannot read '" + path.string() + "': " + std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) {
    return Status(Code::kInputError, "cannot read '" + path.string() + "': it is a folder");
  }
  if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode)) {
    return Status(Code::kInputError,
                  "cannot read '" + path.string() + "': it is a device, not a file; give a file");
  }
  ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) & ~O_NONBLOCK);
  auto too_big = [&](std::uint64_t size) {
    return Status(Code::kInputError, "'" + path.string() + "' is " + std::to_string(size) +
                                         " bytes, over the " + std::to_string(max_bytes) +
                                         "-byte limit for this file");
  };
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes) {
    return too_big(static_cast<std::uint64_t>(st.st_size));
  }
  std::string out;
  if (S_ISREG(st.st_mode)) out.reserve(static_cast<std::size_t>(st.st_size));
  char buf[65536];
  for (;;) {  // st_size is a hint only: files under /proc say 0
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return Status(Code::kInputError,
                    "cannot read '" + path.string() + "': " + std::strerror(errno));
    }
    if (n == 0) break;
    if (out.size() + static_cast<std::size_t>(n) > max_bytes) return too_big(out.size() + n);
    out.append(buf, static_cast<std::size_t>(n));
  }
  return std::optional<std::string>(std::move(out));
}

bool IsWithin(const fs::path& path, const fs::path& dir) {
  const fs::path rel = path.lexically_relative(dir);
  return !rel.empty() && *rel.begin() != "..";
}

fs::path SiblingPath(const fs::path& target, const char* tag) {
  char suffix[48];
  std::snprintf(suffix, sizeof suffix, ".%s-%d-%08x", tag, static_cast<int>(::getpid()),
                static_cast<unsigned>(RandomBits()));
  fs::path base = target;
  if (base.filename().empty()) base = base.parent_path();  // "dir/"
  return base.parent_path() / ("." + base.filename().string() + suffix);
}

namespace {

fs::path UserDir(const char* xdg_var, const fs::path& under_home, const char* in_tmp) {
  if (const char* xdg = std::getenv(xdg_var); xdg != nullptr && *xdg)
    return fs::path(xdg) / "stagekit";
  if (const char* home = std::getenv("HOME"); home != nullptr && *home) {
    return fs::path(home) / under_home / "stagekit";
  }
  return fs::temp_directory_path() / in_tmp;
}

}  // namespace

fs::path UserCacheDir() { return UserDir("XDG_CACHE_HOME", ".cache", "stagekit-cache"); }
fs::path UserDataDir() {
  return UserDir("XDG_DATA_HOME", fs::path(".local") / "share", "stagekit-data");
}

}  // namespace stagekit::util
