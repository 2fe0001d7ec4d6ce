// Helpers shared by the unit and integration tests.
#ifndef STAGEKIT_TESTS_TEST_UTIL_H_
#define STAGEKIT_TESTS_TEST_UTIL_H_

#include <filesystem>
#include <string>
#include <vector>

namespace stagekit::testing {

// A fresh directory under $TMPDIR, removed with everything in it.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

void WriteFile(const std::filesystem::path& path, const std::string& content);
std::string ReadFile(const std::filesystem::path& path);
// Regular files below `dir`, relative, sorted (hidden files included).
std::vector<std::string> ListFiles(const std::filesystem::path& dir);
// The stagekit temporaries (".stagekit-tmp...") anywhere below `dir`.
std::vector<std::string> Temporaries(const std::filesystem::path& dir);
// Gone, or a zombie nobody has reaped yet (it runs no code either way).
bool ProcessGone(long pid);

struct CommandResult {
  int exit_code = -1;  // -1 when killed by a signal
  int term_signal = 0;
  std::string out;
  std::string err;
  long max_rss_kb = 0;
};
// Runs a command (argv[0] a path) with `stdin_data`, in `cwd` if given.
CommandResult RunCommand(const std::vector<std::string>& argv, const std::string& stdin_data = "",
                         const std::filesystem::path& cwd = {});
// "exit N", then stdout and stderr: for assertion messages.
std::string Show(const CommandResult& r);
// Runs the stagekit CLI under test.
CommandResult RunCli(const std::vector<std::string>& args, const std::filesystem::path& cwd = {},
                     const std::string& stdin_data = "");

}  // namespace stagekit::testing

#endif  // STAGEKIT_TESTS_TEST_UTIL_H_
