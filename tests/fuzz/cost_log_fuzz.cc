// Fuzz target: the cost-log reader (JSON lines appended by every run).
// Property: no crash, no sanitizer report; every line is a record or is
// counted as unreadable.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "operate/cost.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::string path = "/tmp/stagekit-cost-fuzz-" + std::to_string(::getpid());
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  int bad = 0;
  auto records = stagekit::operate::ReadCostLog(path, &bad);
  if (records.ok() && bad < 0) __builtin_trap();
  std::remove(path.c_str());
  return 0;
}
