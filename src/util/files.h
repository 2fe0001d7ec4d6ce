// Writing files so that readers see the old file or the new one, never a
// part, and so that nobody else can slip a link or a file into the place a
// writer uses. Internal to stagekit (the executors, the cache, the CLI and its
// tools use it).
//
// Every temporary name stagekit makes is ".stagekit-tmp.<pid>.<random>.<host>":
// unpredictable (64 random bits), created exclusively, never followed through
// a symbolic link, and telling which process on which host left it, so that a
// later run can remove what a crashed or killed one left behind.
#ifndef STAGEKIT_UTIL_FILES_H_
#define STAGEKIT_UTIL_FILES_H_

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "stagekit/status.h"
#include "util/fd.h"

namespace stagekit::util {

// This machine's host name (gethostname), "unknown" when there is none.
const std::string& HostName();

// A fresh temporary name in `dir` (see above); nothing is created.
std::filesystem::path TempNameIn(const std::filesystem::path& dir);
// Whether a file name is a stagekit temporary (this format, or the older
// ".<name>.tmp-..." and ".<name>.stagekit-<pid>-<n>.tmp" ones).
bool IsTempName(const std::string& name);
// Whether the temporary `name` was left by a writer that is gone: a process
// of this host that no longer exists, or, for another host's or an older
// format, a file last changed longer than `max_age` ago.
bool IsStaleTemp(const std::string& name, std::chrono::system_clock::time_point mtime,
                 std::chrono::seconds max_age = std::chrono::hours(24));
// Removes the stale temporaries (files and folders) directly in `dir`; returns
// how many. Errors are ignored: a temporary that cannot be removed stays.
std::size_t RemoveStaleTemps(const std::filesystem::path& dir);

// A new temporary file in `target`'s folder, opened for writing with
// O_CREAT | O_EXCL | O_NOFOLLOW; kOutputError when it cannot be made.
Result<std::pair<UniqueFd, std::filesystem::path>> CreateTempBeside(
    const std::filesystem::path& target, mode_t mode = 0644);
// A new private folder (mode 0700) in `dir`, named as above.
Result<std::filesystem::path> MakePrivateDir(const std::filesystem::path& dir);

// OK when `to` does not exist or is a regular file; otherwise kOutputError
// saying what it is, prefixed with `what`.
Status CheckReplaceable(const std::filesystem::path& to, const std::string& what);
// Renames the regular file `from` over `to`. Refuses (kOutputError, `from`
// left in place) when `to` exists and is anything but a regular file: a
// folder, a link, a device, a FIFO or a socket is never replaced. `what`
// names `to` in messages ("output 'x' of stage 'y'").
Status PublishFile(const std::filesystem::path& from, const std::filesystem::path& to,
                   const std::string& what);

// write(2) until everything is written; kOutputError naming `path`.
Status WriteAllFd(int fd, const char* data, std::size_t size, const std::filesystem::path& path);
// Writes `text` to `path` so that a reader sees the old content or the new:
// - a new or regular `path`: a temporary beside it, renamed over it;
// - a symbolic link: the same at the file it resolves to;
// - a character device or a FIFO (/dev/null, /dev/stdout, a named pipe):
//   written through, as a shell redirection would;
// - anything else (a folder, a socket, a block device): kOutputError.
// On failure the temporary is removed and an earlier `path` is untouched.
Status WriteFileAtomically(const std::filesystem::path& path, std::string_view text);

// The whole of the regular file `path`, refused past `max_bytes` (kInputError:
// "cannot read 'P': why" or "'P' is N bytes, over the M limit ...").
inline constexpr std::uint64_t kReadFileLimit = std::uint64_t{64} << 20;
Result<std::string> ReadFile(const std::filesystem::path& path,
                             std::uint64_t max_bytes = kReadFileLimit);
// The same, with nullopt when nothing is at `path` (ENOENT, ENOTDIR).
Result<std::optional<std::string>> ReadFileIfExists(const std::filesystem::path& path,
                                                    std::uint64_t max_bytes = kReadFileLimit);

// Whether `path` is `dir` or below it, lexically (".." counts, links do not).
bool IsWithin(const std::filesystem::path& path, const std::filesystem::path& dir);
// A hidden, unique name beside `target` for a temporary of its own kind:
// "dir/.name.<tag>-<pid>-<random>".
std::filesystem::path SiblingPath(const std::filesystem::path& target, const char* tag);

// stagekit's folders of the user: $XDG_CACHE_HOME/stagekit (else
// ~/.cache/stagekit) and $XDG_DATA_HOME/stagekit (else
// ~/.local/share/stagekit); without $HOME, a folder in the temp directory.
std::filesystem::path UserCacheDir();
std::filesystem::path UserDataDir();

}  // namespace stagekit::util

#endif  // STAGEKIT_UTIL_FILES_H_
