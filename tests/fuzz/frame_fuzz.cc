// Fuzz target: the Ray bridge's frame decoder (ray/frame.h). Properties: the
// header size it reports always lies within the bytes, what the header task
// keeps is never more than the object, and a frame it encodes decodes to
// exactly its header.
#include <cstddef>
#include <cstdint>
#include <string>

#include "frame.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const char* bytes = reinterpret_cast<const char*>(data);
  const std::size_t header = stagekit::frame::HeaderSize(bytes, size);
  if (header > size || (header != 0 && header < 8)) __builtin_trap();
  if (stagekit::frame::KeepHead(bytes, size).size() > size) __builtin_trap();
  std::vector<char> frame = stagekit::frame::Encode(std::string(bytes, size));
  frame.insert(frame.end(), bytes, bytes + size);  // the output after it
  if (stagekit::frame::HeaderSize(frame.data(), frame.size()) != 8 + size) __builtin_trap();
  return 0;
}
