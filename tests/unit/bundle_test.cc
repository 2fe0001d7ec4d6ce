// Self-contained packages: the libraries a shipped pipeline needs beyond what
// every node has travel in it, every shipped ELF file looks for libraries
// inside the package only, and the launcher refuses a node older than the
// package's floor with one line. (tests/package/run.sh and the Ray tests run
// such packages on "stock nodes": mount namespaces with libraries hidden.)
#include <gtest/gtest.h>

#include <set>
#include <sstream>

#include "deploy/bundle.h"
#include "stagekit/stage.h"
#include "unit/test_util.h"

namespace stagekit::deploy {
namespace {

namespace fs = std::filesystem;
using testing::ReadFile;
using testing::RunCommand;
using testing::Show;
using testing::TempDir;
using testing::WriteFile;

TEST(BundleTest, TheAllowlistIsWhatEveryNodeHas) {
  for (const char* lib :
       {"libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2",
        "libpthread.so.0", "libray_api.so", "libcuda.so.1"}) {
    EXPECT_TRUE(OnEveryNode(lib)) << lib;
  }
  for (const char* lib : {"libzip.so.4", "libcurl.so.4", "libyaml-cpp.so.0.7", "libnettle.so.8",
                          "libpcre2-8.so.0", "libz.so.1", "libasan.so.8", "libcrypt.so.1"}) {
    EXPECT_FALSE(OnEveryNode(lib)) << lib;
  }
}

TEST(BundleTest, VersionsCompareNumberByNumber) {
  EXPECT_GT(CompareVersions("2.34", "2.4"), 0);
  EXPECT_LT(CompareVersions("3.4.9", "3.4.30"), 0);
  EXPECT_EQ(CompareVersions("2.17", "2.17.0"), 0);
  EXPECT_LT(CompareVersions("1.3", "1.3.13"), 0);
  Floor floor{"2.17", "3.4.21", ""};
  floor.Raise({"2.34", "3.4.9", "1.3.13"});
  EXPECT_EQ(floor.glibc, "2.34");
  EXPECT_EQ(floor.glibcxx, "3.4.21");
  EXPECT_EQ(floor.cxxabi, "1.3.13");
}

// Shipped files that are ELF (by their magic bytes), relative to `tree`.
std::vector<std::string> ElfFiles(const fs::path& tree) {
  std::vector<std::string> out;
  for (const std::string& f : testing::ListFiles(tree)) {
    if (ReadFile(tree / f).rfind("\x7f"
                                 "ELF",
                                 0) == 0)
      out.push_back(f);
  }
  return out;
}

// One shipped word count for the tests below. Shipped in SetUp, once: a
// failure there fails every test with ship's own words (an ASSERT in
// SetUpTestSuite would only mark them skipped).
class ShippedWordcount : public ::testing::Test {
 protected:
  void SetUp() override {
    if (dir_ == nullptr) {
      dir_ = new TempDir();
      shipped_ = testing::RunCli({"ship", STAGEKIT_SOURCE_DIR "/examples/wordcount/pipeline.yaml",
                                  "--include", "/usr/share/games/fortunes=corpus",
                                  // A sanitizer build's binaries are far bigger than the cap.
                                  "--max-size", "1GiB", "-o", (*dir_ / "out").string(), "--tree",
                                  (*dir_ / "tree").string()});
      if (shipped_.exit_code == 0) {
        for (const auto& e : fs::directory_iterator(*dir_ / "out")) {
          if (e.path().string().find(".manifest.json") != std::string::npos)
            manifest_ = Json::parse(ReadFile(e.path()));
        }
      }
    }
    ASSERT_EQ(shipped_.exit_code, 0) << Show(shipped_);
    ASSERT_TRUE(manifest_.is_object()) << "ship wrote no manifest in " << (*dir_ / "out");
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static fs::path Tree() { return *dir_ / "tree"; }
  static TempDir* dir_;
  static testing::CommandResult shipped_;
  static Json manifest_;
};
TempDir* ShippedWordcount::dir_ = nullptr;
testing::CommandResult ShippedWordcount::shipped_;
Json ShippedWordcount::manifest_;

TEST_F(ShippedWordcount, TheManifestListsEachBundledLibraryWhereFromAndWhy) {
  ASSERT_TRUE(manifest_.contains("bundled")) << manifest_.dump(1);
  std::set<std::string> bundled;
  for (const Json& lib : manifest_["bundled"]) {
    const std::string soname = lib["soname"];
    bundled.insert(soname);
    EXPECT_FALSE(OnEveryNode(soname)) << soname;
    EXPECT_TRUE(fs::path(lib["from"].get<std::string>()).is_absolute()) << lib.dump();
    EXPECT_FALSE(lib["needed_by"].empty()) << lib.dump();
    EXPECT_TRUE(fs::exists(Tree() / lib["place"].get<std::string>())) << lib.dump();
  }
  // The CLI's and libstagekit's own, and what libcurl brings with it.
  for (const char* lib :
       {"libyaml-cpp.so.0.7", "libzip.so.4", "libcurl.so.4", "libnettle.so.8", "libpcre2-8.so.0"}) {
    EXPECT_EQ(bundled.count(lib), 1u) << lib << " in " << manifest_["bundled"].dump(1);
  }
  EXPECT_EQ(bundled.count("libstagekit.so.0"), 0u);  // shipped as itself, not bundled
  EXPECT_EQ(manifest_["not_bundled"], Json(NodeLibraries()));
}

TEST_F(ShippedWordcount, EveryShippedElfFileLooksForLibrariesInsideThePackageOnly) {
  const std::vector<std::string> elves = ElfFiles(Tree());
  ASSERT_GE(elves.size(), 8u);
  for (const std::string& f : elves) {
    testing::CommandResult r = RunCommand({"/usr/bin/readelf", "-d", (Tree() / f).string()});
    ASSERT_EQ(r.exit_code, 0) << Show(r);
    std::size_t at = r.out.find("(RUNPATH)");
    ASSERT_NE(at, std::string::npos) << f << " has no RUNPATH";
    const std::string line = r.out.substr(at, r.out.find('\n', at) - at);
    const std::string runpath =
        line.substr(line.find('[') + 1, line.rfind(']') - line.find('[') - 1);
    std::istringstream parts(runpath);
    for (std::string part; std::getline(parts, part, ':');) {
      EXPECT_EQ(part.rfind("$ORIGIN", 0), 0u) << f << " RUNPATH " << runpath;
    }
  }
  // What the loader makes of the driver here: everything outside the
  // allowlist from the package (the system's copies are still there).
  testing::CommandResult ldd =
      RunCommand({"/usr/bin/ldd", (Tree() / ".stagekit/bin/stagekit").string()});
  ASSERT_EQ(ldd.exit_code, 0) << Show(ldd);
  std::istringstream lines(ldd.out);
  int from_package = 0;
  for (std::string line; std::getline(lines, line);) {
    std::size_t arrow = line.find(" => ");
    if (arrow == std::string::npos) continue;
    std::string soname = line.substr(0, arrow);
    soname.erase(0, soname.find_first_not_of(" \t"));
    if (OnEveryNode(soname)) continue;
    EXPECT_NE(line.find(Tree().string() + "/.stagekit/"), std::string::npos) << line;
    ++from_package;
  }
  EXPECT_GE(from_package, 6) << ldd.out;
}

TEST_F(ShippedWordcount, TheFloorIsRecordedAndTheLauncherChecksIt) {
  const Json& floor = manifest_["floor"];
  ASSERT_TRUE(floor.is_object()) << manifest_.dump(1);
  EXPECT_GE(CompareVersions(floor["glibc"], "2.17"), 0) << floor;
  EXPECT_FALSE(floor["glibcxx"].get<std::string>().empty()) << floor;
  EXPECT_EQ(ReadFile(Tree() / kFloorFile), "glibc " + floor["glibc"].get<std::string>() +
                                               "\nglibcxx " + floor["glibcxx"].get<std::string>() +
                                               "\ncxxabi " + floor["cxxabi"].get<std::string>() +
                                               "\n");
  const std::string launcher = (Tree() / kLauncher).string();
  testing::CommandResult fine = RunCommand({"/bin/sh", launcher, "--version"});
  EXPECT_EQ(fine.exit_code, 0) << Show(fine);
  EXPECT_EQ(fine.out, std::string(STAGEKIT_VERSION_FOR_TEST) + "\n");

  // A package built against a newer C library than this node's.
  testing::CommandResult getconf = RunCommand({"/usr/bin/getconf", "GNU_LIBC_VERSION"});
  ASSERT_EQ(getconf.exit_code, 0);
  const std::string have = getconf.out.substr(6, getconf.out.find('\n') - 6);  // "glibc 2.36"
  TempDir copy;
  WriteFile(copy / "p/.stagekit/floor", "glibc 9.99\nglibcxx 3.4.30\ncxxabi 1.3.13\n");
  WriteFile(copy / "p/.stagekit/bin/stagekit-launch", ReadFile(launcher));
  fs::create_symlink(Tree() / ".stagekit/bin/stagekit", copy / "p/.stagekit/bin/stagekit");
  testing::CommandResult old =
      RunCommand({"/bin/sh", (copy / "p" / kLauncher).string(), "--version"});
  EXPECT_EQ(old.exit_code, 19) << Show(old);
  EXPECT_EQ(old.out, "");
  EXPECT_EQ(old.err, "stagekit: this package needs glibc 9.99 or newer, but this node has glibc " +
                         have + "; ship it from a machine with glibc " + have +
                         " or older, or run it on a newer node image\n");
  // ... and against a newer libstdc++.
  WriteFile(copy / "p/.stagekit/floor", "glibc 2.17\nglibcxx 3.4.99\ncxxabi 1.3.13\n");
  testing::CommandResult cxx =
      RunCommand({"/bin/sh", (copy / "p" / kLauncher).string(), "--version"});
  EXPECT_EQ(cxx.exit_code, 19) << Show(cxx);
  EXPECT_NE(cxx.err.find("needs libstdc++ with GLIBCXX_3.4.99"), std::string::npos) << Show(cxx);
}

// ship --json and doctor say what a node needs: the same floor the manifest has.
TEST_F(ShippedWordcount, ShipAndDoctorSayWhatEveryNodeNeeds) {
  TempDir dir;
  auto ship = testing::RunCli({"ship", STAGEKIT_SOURCE_DIR "/examples/trivial/pipeline.yaml",
                               "--max-size", "1GiB", "-o", (dir / "out").string(), "--json"});
  ASSERT_EQ(ship.exit_code, 0) << Show(ship);
  Json summary = Json::parse(ship.out);
  EXPECT_EQ(summary["floor"], manifest_["floor"]) << summary.dump(1);
  EXPECT_GE(summary["bundled"].get<int>(), 5) << summary.dump(1);
  auto doctor = testing::RunCli({"doctor", STAGEKIT_SOURCE_DIR "/examples/trivial/pipeline.yaml"});
  EXPECT_EQ(doctor.exit_code, 0) << Show(doctor);
  EXPECT_NE(doctor.err.find("a package of this pipeline needs glibc " +
                            manifest_["floor"]["glibc"].get<std::string>() +
                            " and libstdc++ with GLIBCXX_" +
                            manifest_["floor"]["glibcxx"].get<std::string>() + " on every node"),
            std::string::npos)
      << Show(doctor);
}

}  // namespace
}  // namespace stagekit::deploy
