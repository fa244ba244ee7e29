# Run at every build of `loom` (cmake -P, from planner/CMakeLists.txt): writes OUT, a header with
# LOOM_VERSION (the CMake project version) and LOOM_COMMIT (the git commit of SOURCE_DIR, with
# "-dirty" when tracked files differ from it; "unknown" outside a git checkout of loom itself).
# file(CONFIGURE) leaves OUT untouched when its text is unchanged, so nothing recompiles then.
set(commit unknown)
find_program(GIT git)
if(GIT)
  execute_process(COMMAND ${GIT} -C ${SOURCE_DIR} rev-parse --show-toplevel
                  OUTPUT_VARIABLE top RESULT_VARIABLE top_rc OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  # A source tree unpacked inside some other repository is not a checkout of loom.
  if(top_rc EQUAL 0 AND EXISTS "${top}")
    file(REAL_PATH "${top}" top)
    file(REAL_PATH "${SOURCE_DIR}" src)
  endif()
  if(top_rc EQUAL 0 AND top STREQUAL src)
    execute_process(COMMAND ${GIT} -C ${SOURCE_DIR} rev-parse --short=12 HEAD
                    OUTPUT_VARIABLE head RESULT_VARIABLE head_rc OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(head_rc EQUAL 0 AND NOT head STREQUAL "")
      set(commit ${head})
      execute_process(COMMAND ${GIT} -C ${SOURCE_DIR} diff --quiet HEAD --
                      RESULT_VARIABLE dirty_rc OUTPUT_QUIET ERROR_QUIET)
      if(dirty_rc EQUAL 1)
        string(APPEND commit "-dirty")
      endif()
    endif()
  endif()
endif()
file(CONFIGURE OUTPUT ${OUT} CONTENT [[
// Generated at build time by planner/cli/version.cmake: what `loom --version` prints.
#pragma once
#define LOOM_VERSION "@VERSION@"
#define LOOM_COMMIT "@commit@"
]] @ONLY)
