// src/util: the helpers every part of stagekit shares.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "unit/test_util.h"
#include "util/files.h"
#include "util/regex.h"
#include "util/text.h"
#include "util/threads.h"

namespace stagekit::util {
namespace {

namespace fs = std::filesystem;

TEST(UtilText, HexShellQuoteSizesDurationsTimes) {
  EXPECT_EQ(Hex(std::string_view("\x00\x0f\xff", 3)), "000fff");
  EXPECT_EQ(RandomHex(8).size(), 16u);
  EXPECT_NE(RandomHex(16), RandomHex(16));
  EXPECT_EQ(ShellQuote("plain-word_1.txt"), "plain-word_1.txt");
  EXPECT_EQ(ShellQuote(""), "''");
  EXPECT_EQ(ShellQuote("it's here"), "'it'\\''s here'");
  EXPECT_EQ(HumanBytes(512), "512 B");
  EXPECT_EQ(HumanBytes(1536), "1.5 KiB");
  EXPECT_EQ(HumanBytes(std::uint64_t{3} << 30), "3.0 GiB");
  EXPECT_EQ(Trim(" \t a b \r\n"), "a b");
  EXPECT_EQ(Trim(" \n "), "");
  using std::chrono::milliseconds;
  EXPECT_EQ(FormatMs(milliseconds(250)), "250ms");
  EXPECT_EQ(FormatMs(milliseconds(2000)), "2s");
  EXPECT_EQ(FormatMs(milliseconds(1500)), "1.5s");
  EXPECT_EQ(FormatMs(milliseconds(300000)), "5m");
  EXPECT_EQ(FormatMs(milliseconds(7200000)), "2h");
  EXPECT_EQ(IsoTime(std::chrono::system_clock::from_time_t(0)), "1970-01-01T00:00:00Z");
}

TEST(UtilText, InvalidUtf8AtFindsTheFirstBadByte) {
  constexpr std::size_t kOk = std::string_view::npos;
  EXPECT_EQ(InvalidUtf8At(""), kOk);
  EXPECT_EQ(InvalidUtf8At("plain ascii"), kOk);
  EXPECT_EQ(InvalidUtf8At("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"), kOk);  // é € 😀
  EXPECT_EQ(InvalidUtf8At("\xf4\x8f\xbf\xbf"), kOk);                           // U+10FFFF
  EXPECT_EQ(InvalidUtf8At("caf\xe9"), 3u);                                     // Latin-1
  EXPECT_EQ(InvalidUtf8At("ab\x80"), 2u);                                      // lone continuation
  EXPECT_EQ(InvalidUtf8At("\xc0\xaf"), 0u);                                    // overlong '/'
  EXPECT_EQ(InvalidUtf8At("\xc1\xbf"), 0u);
  EXPECT_EQ(InvalidUtf8At("\xe0\x80\xaf"), 0u);      // overlong
  EXPECT_EQ(InvalidUtf8At("\xf0\x80\x80\xaf"), 0u);  // overlong
  EXPECT_EQ(InvalidUtf8At("x\xed\xa0\x80"), 1u);     // surrogate
  EXPECT_EQ(InvalidUtf8At("\xf4\x90\x80\x80"), 0u);  // past U+10FFFF
  EXPECT_EQ(InvalidUtf8At("\xf5\x80\x80\x80"), 0u);
  EXPECT_EQ(InvalidUtf8At("\xff"), 0u);
  EXPECT_EQ(InvalidUtf8At("ok\xe2\x82"), 2u);                  // cut short
  EXPECT_EQ(InvalidUtf8At("\xe2\x28\xa1"), 0u);                // bad second byte
  EXPECT_EQ(InvalidUtf8At(std::string_view("a\0b", 3)), kOk);  // NUL is UTF-8
  // Agrees with nlohmann's own check on every two-byte string.
  for (int a = 0; a < 256; ++a) {
    for (int b = 0; b < 256; ++b) {
      const std::string s{static_cast<char>(a), static_cast<char>(b)};
      bool json_ok = true;
      try {
        (void)nlohmann::json(s).dump();
      } catch (const nlohmann::json::exception&) {
        json_ok = false;
      }
      ASSERT_EQ(InvalidUtf8At(s) == kOk, json_ok) << a << " " << b;
    }
  }
  EXPECT_EQ(LineColumn("ab\ncd\ne", 4), "2:2");
  EXPECT_EQ(LineColumn("ab", 0), "1:1");
}

TEST(UtilFiles, ReadFileHasALimitAndSaysWhy) {
  stagekit::testing::TempDir dir;
  const fs::path f = dir.path() / "f";
  std::ofstream(f) << std::string(1000, 'x');
  auto all = ReadFile(f);
  ASSERT_TRUE(all.ok()) << all.status().message();
  EXPECT_EQ(all->size(), 1000u);
  auto capped = ReadFile(f, 999);
  ASSERT_FALSE(capped.ok());
  EXPECT_EQ(capped.status().code(), Code::kInputError);
  EXPECT_NE(capped.status().message().find("over the 999-byte limit"), std::string::npos);
  auto missing = ReadFile(dir.path() / "nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("No such file"), std::string::npos);
  auto absent = ReadFileIfExists(dir.path() / "nope");
  ASSERT_TRUE(absent.ok());
  EXPECT_FALSE(absent->has_value());
  EXPECT_FALSE(ReadFile(dir.path()).ok());  // a folder
  // /proc files say size 0 and still have content; the limit holds for them too.
  auto proc = ReadFile("/proc/self/status");
  ASSERT_TRUE(proc.ok());
  EXPECT_NE(proc->find("Name:"), std::string::npos);
  EXPECT_FALSE(ReadFile("/proc/self/status", 16).ok());
  // A FIFO nobody writes to ends at once instead of hanging the reader; a
  // device (made here, never the machine's own /dev) is refused.
  ASSERT_EQ(::mkfifo((dir.path() / "fifo").c_str(), 0600), 0);
  auto fifo = ReadFile(dir.path() / "fifo");
  ASSERT_TRUE(fifo.ok()) << fifo.status().message();
  EXPECT_EQ(*fifo, "");
  ASSERT_EQ(::mknod((dir.path() / "null").c_str(), S_IFCHR | 0600, makedev(1, 3)), 0)
      << "mknod needs root (CI runs as root): " << std::strerror(errno);
  auto device = ReadFile(dir.path() / "null");
  ASSERT_FALSE(device.ok());
  EXPECT_NE(device.status().message().find("it is a device, not a file"), std::string::npos);
}

TEST(UtilFiles, IsWithinAndSiblingPath) {
  EXPECT_TRUE(IsWithin("/a/b/c", "/a/b"));
  EXPECT_TRUE(IsWithin("/a/b", "/a/b"));
  EXPECT_FALSE(IsWithin("/a/bc", "/a/b"));
  EXPECT_FALSE(IsWithin("/a/b/../c", "/a/b"));
  const fs::path s = SiblingPath("/x/out.zip", "tmp");
  EXPECT_EQ(s.parent_path(), "/x");
  EXPECT_EQ(s.filename().string().rfind(".out.zip.tmp-", 0), 0u) << s;
  EXPECT_NE(SiblingPath("/x/out.zip", "tmp"), s);
  EXPECT_EQ(SiblingPath("/x/dir/", "old").parent_path(), "/x");
}

TEST(UtilRegex, MatchSearchFindAllReplace) {
  Regex digits("[0-9]{1,3}");
  EXPECT_TRUE(digits.FullMatch("123"));
  EXPECT_FALSE(digits.FullMatch("1234"));
  EXPECT_FALSE(digits.FullMatch("12a"));
  EXPECT_TRUE(digits.Search("ab12"));
  std::vector<std::string> g;
  ASSERT_TRUE(Regex("(--[a-z]+=)(.*)").FullMatch("--resources={\"a\": 1}", &g));
  ASSERT_EQ(g.size(), 3u);
  EXPECT_EQ(g[1], "--resources=");
  EXPECT_EQ(g[2], "{\"a\": 1}");
  auto all = Regex("([a-z])=([0-9]*)").FindAll("a=1 b= c=33");
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[2][1], "c");
  EXPECT_EQ(all[2][2], "33");
  EXPECT_EQ(Regex("x*").FindAll("ab").size(), 3u);  // empty matches move on
  EXPECT_EQ(Regex(R"(\\(.))").ReplaceAll(R"(a\"b\\c)", "$1"), R"(a"b\c)");
  EXPECT_EQ(Regex("o").ReplaceAll(std::string(200, 'o'), "00"), std::string(400, '0'));
  // std::regex overflowed its stack on long input; PCRE2 does not, and a
  // match that reaches one of its limits is an error, never a silent "no".
  const std::string long_text = std::string(1 << 20, 'a') + "c";
  EXPECT_TRUE(Regex("[ab]*c").Search(long_text));
  try {
    EXPECT_TRUE(Regex("(a|b)*c").Search(long_text));
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("limit"), std::string::npos) << e.what();
  }
  auto bad = Regex::Compile("(unclosed");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kUsage);
  EXPECT_NE(bad.status().message().find("offset"), std::string::npos);
  EXPECT_THROW(Regex("[z-a]"), std::logic_error);
  // Invalid UTF-8 is text that does not match, not an error, and a whole
  // match spans the whole text in either mode (the fuzzer found "cpus:
  // \xff\xff\xff\xff2" passing the cluster spec's "[0-9]{1,6}" in UTF-8 mode).
  EXPECT_FALSE(Regex("é", true).Search("\xff\xfe"));
  EXPECT_TRUE(Regex("é", true).FullMatch("é"));
  EXPECT_TRUE(Regex("[^a]", true).FullMatch("é"));  // one character
  EXPECT_FALSE(Regex("[^a]").FullMatch("é"));       // two bytes
  for (bool utf8 : {false, true}) {
    EXPECT_FALSE(Regex("[0-9]{1,6}", utf8)
                     .FullMatch("\xff\xff\xff\xff"
                                "2"))
        << utf8;
    EXPECT_FALSE(Regex("[0-9]{1,6}", utf8).FullMatch("2\xff")) << utf8;
    EXPECT_TRUE(Regex("[0-9]{1,6}", utf8).FullMatch("123456")) << utf8;
  }
}

TEST(UtilThreads, EveryWorkerRunsOnceAndTheCallerIsOne) {
  std::atomic<int> sum{0};
  std::atomic<int> on_caller{0};
  const auto caller = std::this_thread::get_id();
  RunOnThreads(4, [&](std::size_t i) {
    sum += static_cast<int>(i) + 1;
    if (std::this_thread::get_id() == caller) ++on_caller;
  });
  EXPECT_EQ(sum.load(), 1 + 2 + 3 + 4);
  EXPECT_EQ(on_caller.load(), 1);
  int ran = 0;
  RunOnThreads(0, [&](std::size_t) { ++ran; });
  EXPECT_EQ(ran, 1);
}

}  // namespace
}  // namespace stagekit::util
