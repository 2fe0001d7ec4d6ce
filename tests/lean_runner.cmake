# The subprocess executor's stage runner must stay lean: its shared-library
# closure holds libstagekit and what it needs, never the command line's
# HTTP, TLS, zip or regex libraries (issue 15: a no-op subprocess stage had
# grown from 1.9 ms to 10.7 ms, 73% of it relocating those symbols).
# Usage: cmake -DRUNNER=path/to/stagekit-stage -P lean_runner.cmake
execute_process(COMMAND ldd "${RUNNER}" OUTPUT_VARIABLE closure RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "ldd ${RUNNER} failed (${rc})")
endif()
if(NOT closure MATCHES "libstagekit\\.so")
  message(FATAL_ERROR "${RUNNER} does not link libstagekit; is it the runner?\n${closure}")
endif()
foreach(lib libcurl libgnutls libzip libpcre2 libkrb5 libldap libssh)
  if(closure MATCHES "${lib}")
    message(FATAL_ERROR "the lean stage runner loads ${lib}:\n${closure}")
  endif()
endforeach()
string(REGEX MATCHALL "\n" lines "${closure}")
list(LENGTH lines count)
message(STATUS "stagekit-stage loads ${count} shared objects")
