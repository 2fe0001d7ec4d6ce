// A no-op C++ program that loads libstdc++ like any C++ runner must: the
// spawn floor for a process that can run C++ stage libraries.
#include <iostream>

int main(int argc, char**) {
  if (argc > 1) std::cout << "noop\n";  // keeps the libstdc++ dependency
  return 0;
}
