// Writing files: temporaries nobody can predict or redirect, a publisher
// that never replaces what is not a regular file, writes through to devices
// and FIFOs, and the clean-up of what dead writers left.
#include "util/files.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <thread>

#include "unit/test_util.h"

namespace stagekit::util {
namespace {

namespace fs = std::filesystem;
using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;

// The pid of a process that has exited and been reaped.
pid_t DeadPid() {
  pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;
}

TEST(Files, TemporaryNamesAreUnpredictableAndSayWhoMadeThem) {
  TempDir dir;
  const fs::path a = TempNameIn(dir.path()), b = TempNameIn(dir.path());
  EXPECT_NE(a, b);
  const std::string name = a.filename().string();
  EXPECT_EQ(name.rfind(".stagekit-tmp." + std::to_string(::getpid()) + ".", 0), 0u) << name;
  EXPECT_TRUE(IsTempName(name));
  EXPECT_TRUE(IsTempName(".out.bin.stagekit-12-3.tmp"));  // older formats
  EXPECT_TRUE(IsTempName(".x.tmp-host-1-2-3"));
  EXPECT_FALSE(IsTempName("result.tmp"));
  EXPECT_FALSE(IsTempName(".stagekit-run.json"));
  EXPECT_LT(name.size(), 120u);  // whatever the target's name: never over NAME_MAX
}

TEST(Files, ATemporaryCreatedBesideATargetNeverFollowsALink) {
  TempDir dir;
  WriteFile(dir / "victim", "keep me");
  auto made = CreateTempBeside(dir / "out");
  ASSERT_TRUE(made.ok()) << made.status().message();
  EXPECT_EQ(made->second.parent_path(), dir.path());
  struct stat st {};
  ASSERT_EQ(::lstat(made->second.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  // A link planted at a temporary's name is never written through.
  fs::path planted = TempNameIn(dir.path());
  fs::create_symlink(dir / "victim", planted);
  int fd = ::open(planted.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  EXPECT_LT(fd, 0);
  EXPECT_EQ(ReadFile(dir / "victim"), "keep me");
}

TEST(Files, PublishRefusesToReplaceAnythingButARegularFile) {
  TempDir dir;
  WriteFile(dir / "elsewhere", "not yours");
  fs::create_symlink(dir / "elsewhere", dir / "link");
  fs::create_directories(dir / "folder");
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0600), 0);
  for (const char* target : {"link", "folder", "fifo"}) {
    WriteFile(dir / "new", "new bytes");
    Status s = PublishFile(dir / "new", dir / target, "output 'x'");
    EXPECT_EQ(s.code(), Code::kOutputError) << target;
    EXPECT_NE(s.message().find("exists and is"), std::string::npos) << s.message();
    EXPECT_TRUE(fs::exists(dir / "new")) << "the new file stays for its owner to remove";
  }
  EXPECT_TRUE(fs::is_symlink(dir / "link"));
  EXPECT_EQ(ReadFile(dir / "elsewhere"), "not yours");
  // A regular file, or nothing, is replaced.
  WriteFile(dir / "plain", "old");
  ASSERT_TRUE(PublishFile(dir / "new", dir / "plain", "output 'x'").ok());
  EXPECT_EQ(ReadFile(dir / "plain"), "new bytes");
}

TEST(Files, AtomicWritesGoThroughDevicesAndFifosAndNeverReplaceThem) {
  TempDir dir;
  // A character device of the test's own (the null device's numbers), never /dev's entries.
  const fs::path dev = dir / "null";
  ASSERT_EQ(::mknod(dev.c_str(), S_IFCHR | 0666, makedev(1, 3)), 0)
      << "mknod needs root (CI runs as root): " << std::strerror(errno);
  ASSERT_TRUE(WriteFileAtomically(dev, "report\n").ok());
  struct stat st {};
  ASSERT_EQ(::lstat(dev.c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode)) << "the device node was replaced by a regular file";

  const fs::path fifo = dir / "fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  std::string got;
  std::thread reader([&] { got = ReadFile(fifo); });
  ASSERT_TRUE(WriteFileAtomically(fifo, "through the pipe\n").ok());
  reader.join();
  EXPECT_EQ(got, "through the pipe\n");
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));

  // A folder is refused; a link is followed and its target replaced.
  fs::create_directories(dir / "folder");
  EXPECT_EQ(WriteFileAtomically(dir / "folder", "x").code(), Code::kOutputError);
  WriteFile(dir / "target.json", "old");
  fs::create_symlink(dir / "target.json", dir / "link.json");
  ASSERT_TRUE(WriteFileAtomically(dir / "link.json", "new").ok());
  EXPECT_TRUE(fs::is_symlink(dir / "link.json"));
  EXPECT_EQ(ReadFile(dir / "target.json"), "new");
  // Nothing of the writer is left behind.
  for (const auto& e : fs::directory_iterator(dir.path())) {
    EXPECT_FALSE(IsTempName(e.path().filename().string())) << e.path();
  }
}

TEST(Files, WhatDeadWritersLeftIsRemovedAndWhatLiveOnesUseIsKept) {
  TempDir dir;
  const pid_t dead = DeadPid();
  // ".stagekit-tmp.<pid>.<random>.<host>": this host's name, a dead pid.
  const std::string mine_name = TempNameIn(".").filename().string();
  const std::size_t after_pid = mine_name.find('.', std::string(".stagekit-tmp.").size());
  const std::string host = mine_name.substr(mine_name.find('.', after_pid + 1) + 1);
  const fs::path dead_dir =
      dir / (".stagekit-tmp." + std::to_string(dead) + ".0123456789abcdef." + host);
  fs::create_directories(dead_dir);
  WriteFile(dead_dir / "partial.bin", "half");
  auto mine = MakePrivateDir(dir.path());
  ASSERT_TRUE(mine.ok());
  EXPECT_EQ(fs::status(*mine).permissions() & fs::perms::all, fs::perms::owner_all);
  WriteFile(dir / "result.txt", "a real output");
  EXPECT_EQ(RemoveStaleTemps(dir.path()), 1u);
  EXPECT_FALSE(fs::exists(dead_dir));
  EXPECT_TRUE(fs::exists(*mine)) << "this process's own temporary was removed";
  EXPECT_EQ(ReadFile(dir / "result.txt"), "a real output");
  // Another host's temporary: only once old.
  const std::string other = ".stagekit-tmp.1.0123456789abcdef.some-other-host";
  EXPECT_FALSE(IsStaleTemp(other, std::chrono::system_clock::now()));
  EXPECT_TRUE(IsStaleTemp(other, std::chrono::system_clock::now() - std::chrono::hours(25)));
}

}  // namespace
}  // namespace stagekit::util
