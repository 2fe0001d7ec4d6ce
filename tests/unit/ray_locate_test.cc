// Finding Ray at run time (FindRay): on PATH, in STAGEKIT_RAY_BIN_DIR, in a
// virtual environment or a conda-like prefix, and the refusals: no ray-cpp,
// a Ray of another version than the bridge's.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "stagekit/ray.h"
#include "unit/test_util.h"

namespace stagekit {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;
using testing::WriteFile;

// An environment at `prefix` as pip lays it out: bin/ray (a console script
// whose first line names the interpreter), optionally bin/python, and
// lib/python3.11/site-packages/ray with its _version.py and, with ray-cpp,
// cpp/lib/libray_api.so (an empty stand-in: FindRay only locates it).
void MakeEnv(const fs::path& prefix, const std::string& version, bool with_cpp, bool with_python) {
  WriteFile(prefix / "bin" / "ray", "#!" + (prefix / "bin" / "python").string() + "\nimport ray\n");
  ::chmod((prefix / "bin" / "ray").c_str(), 0755);
  if (with_python) fs::create_symlink("/bin/true", prefix / "bin" / "python");
  const fs::path pkg = prefix / "lib" / "python3.11" / "site-packages" / "ray";
  WriteFile(
      pkg / "_version.py",
      "# Replaced when building the wheels.\ncommit = \"abc\"\nversion = \"" + version + "\"\n");
  if (with_cpp) WriteFile(pkg / "cpp" / "lib" / "libray_api.so", "");
}

std::string Want() { return RayBridgeVersion(); }

TEST(FindRay, FindsTheRayOnThePathAndItsPackageAndCppApi) {
  if (Want().empty()) GTEST_SKIP() << "this build has no Ray bridge (STAGEKIT_RAY=OFF)";
  TempDir dir;
  MakeEnv(dir / "env", Want(), true, true);
  fs::create_directories(dir / "empty");
  auto found =
      FindRay({}, (dir / "empty").string() + "::relative/bin:" + (dir / "env/bin").string());
  ASSERT_TRUE(found.ok()) << found.status().message();
  EXPECT_EQ(found->bin_dir, dir / "env/bin");
  EXPECT_EQ(found->found_by, "PATH");
  EXPECT_EQ(found->python, dir / "env/bin/python");
  EXPECT_EQ(found->package, dir / "env/lib/python3.11/site-packages/ray");
  EXPECT_EQ(found->api_library, found->package / "cpp/lib/libray_api.so");
  EXPECT_EQ(found->version, Want());
}

TEST(FindRay, TheBinDirWinsAndAScriptsFirstLineNamesItsPython) {
  if (Want().empty()) GTEST_SKIP() << "this build has no Ray bridge (STAGEKIT_RAY=OFF)";
  TempDir dir;
  MakeEnv(dir / "on-path", Want(), true, true);
  // No python beside `ray`: the interpreter its first line names.
  MakeEnv(dir / "chosen", Want(), true, false);
  fs::create_symlink("/bin/true", dir / "interp");
  WriteFile(dir / "chosen/bin/ray", "#!" + (dir / "interp").string() + "\n");
  ::chmod((dir / "chosen/bin/ray").c_str(), 0755);
  auto found = FindRay(dir / "chosen/bin", (dir / "on-path/bin").string());
  ASSERT_TRUE(found.ok()) << found.status().message();
  EXPECT_EQ(found->bin_dir, dir / "chosen/bin");
  EXPECT_EQ(found->found_by, "STAGEKIT_RAY_BIN_DIR");
  EXPECT_EQ(found->python, dir / "interp");
}

TEST(FindRay, ARayOfAnotherVersionIsRefusedNamingBoth) {
  if (Want().empty()) GTEST_SKIP() << "this build has no Ray bridge (STAGEKIT_RAY=OFF)";
  TempDir dir;
  MakeEnv(dir / "old", "2.9.3", true, true);
  auto found = FindRay(dir / "old/bin", "");
  ASSERT_FALSE(found.ok());
  EXPECT_EQ(found.status().code(), Code::kRayUnavailable);
  const std::string& m = found.status().message();
  EXPECT_NE(m.find("is Ray 2.9.3"), std::string::npos) << m;
  EXPECT_NE(m.find("built for Ray " + Want()), std::string::npos) << m;
  EXPECT_NE(m.find("ray-cpp"), std::string::npos) << m;
  EXPECT_NE(m.find((dir / "old/bin").string()), std::string::npos) << m;
}

TEST(FindRay, ARayWithoutItsCppApiSaysToInstallRayCpp) {
  if (Want().empty()) GTEST_SKIP() << "this build has no Ray bridge (STAGEKIT_RAY=OFF)";
  TempDir dir;
  MakeEnv(dir / "nocpp", Want(), false, true);
  auto found = FindRay(dir / "nocpp/bin", "");
  ASSERT_FALSE(found.ok());
  EXPECT_EQ(found.status().code(), Code::kRayUnavailable);
  EXPECT_NE(found.status().message().find("install ray-cpp==" + Want()), std::string::npos)
      << found.status().message();
}

TEST(FindRay, NoRayInTheGivenBinDirIsRayUnavailable) {
  TempDir dir;
  auto found = FindRay(dir / "nothing", "");
  ASSERT_FALSE(found.ok());
  EXPECT_EQ(found.status().code(), Code::kRayUnavailable);
  EXPECT_NE(found.status().message().find("STAGEKIT_RAY_BIN_DIR"), std::string::npos);
}

}  // namespace
}  // namespace stagekit
