# stagekit_add_stage_library(<name>
#     [SOURCES src.cc ...]
#     [WHOLE_ARCHIVE static_lib ...]   # static libraries whose registrations must all be kept
#     [LINK_LIBRARIES lib ...]         # ordinary dependencies
#     [OUTPUT_DIRECTORY dir])          # default: <build>/lib/stagekit/stages
#
# Builds a stage library: a shared object that `stagekit --stages` (or a
# pipeline's `libraries:` entry) loads, whose STAGEKIT_STAGE registrations run
# when it is loaded. A translation unit that only registers stages has no
# symbol anyone refers to, so a linker drops it from a static library; the
# WHOLE_ARCHIVE list is linked with --whole-archive so that every registration
# survives. Undefined symbols are an error at link time, not at load time.
function(stagekit_add_stage_library name)
  cmake_parse_arguments(PARSE_ARGV 1 ARG "" "OUTPUT_DIRECTORY" "SOURCES;WHOLE_ARCHIVE;LINK_LIBRARIES")
  if(ARG_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "stagekit_add_stage_library(${name}): unknown arguments ${ARG_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT ARG_SOURCES AND NOT ARG_WHOLE_ARCHIVE)
    message(FATAL_ERROR "stagekit_add_stage_library(${name}): give SOURCES or WHOLE_ARCHIVE")
  endif()
  add_library(${name} SHARED ${ARG_SOURCES})
  if(TARGET stagekit::stagekit)
    target_link_libraries(${name} PRIVATE stagekit::stagekit)
  else()
    target_link_libraries(${name} PRIVATE stagekit)
  endif()
  foreach(lib IN LISTS ARG_WHOLE_ARCHIVE)
    target_link_libraries(${name} PRIVATE "$<LINK_LIBRARY:WHOLE_ARCHIVE,${lib}>")
  endforeach()
  if(ARG_LINK_LIBRARIES)
    target_link_libraries(${name} PRIVATE ${ARG_LINK_LIBRARIES})
  endif()
  target_link_options(${name} PRIVATE LINKER:--no-undefined)
  set_target_properties(${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  if(ARG_OUTPUT_DIRECTORY)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${ARG_OUTPUT_DIRECTORY})
  elseif(DEFINED PROJECT_BINARY_DIR)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/lib/stagekit/stages)
  endif()
endfunction()
