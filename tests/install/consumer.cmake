# cmake -P script behind the install tests (tests/install/CMakeLists.txt). One step per run:
#   MODE=install  cmake --install BUILD_DIR --prefix PREFIX, PREFIX emptied first (the fixture
#                 every consumer needs)
#   MODE=cmake    configure SOURCE into BUILD with CMAKE_ARGS (PREFIX on CMAKE_PREFIX_PATH, no
#                 package registry); with CHECK_PACKAGE_DIR, check that find_package(isothreads)
#                 took the package under PREFIX; build; run each program of RUN under MPIEXEC
#   MODE=make     make -f SOURCE/Makefile in BUILD with MAKE_ENV (VAR=value entries) in the
#                 environment, PREFIX/BINDIR first on PATH and PREFIX/LIBDIR/pkgconfig on
#                 PKG_CONFIG_PATH; with CHECK_SHOW, check what `isocxx -show` prints; then RUN
# Lists are passed with | between entries. Any failing step fails the test, naming the step;
# each command's output goes to the test log.
foreach(var MODE PREFIX BINDIR LIBDIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "consumer.cmake: -D${var}=... is required")
  endif()
endforeach()
foreach(list CMAKE_ARGS MAKE_ENV RUN MPIEXEC_FLAGS)
  string(REPLACE "|" ";" ${list} "${${list}}")
endforeach()
set(build_type "${CONFIG}")
if(build_type STREQUAL "")
  set(build_type RelWithDebInfo)
endif()

function(step name)
  message(STATUS "install test: ${name}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc COMMAND_ECHO STDOUT)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install test: step '${name}' failed (${rc})")
  endif()
endfunction()

# Runs `isocxx -show ARGS...` and checks its output against a regular expression.
function(check_show what regex)
  execute_process(COMMAND "${PREFIX}/${BINDIR}/isocxx" -show ${ARGN} OUTPUT_VARIABLE shown
                  OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc COMMAND_ECHO STDOUT)
  message(STATUS "isocxx -show ${ARGN}: ${shown}")
  if(NOT rc EQUAL 0 OR NOT shown MATCHES "${regex}")
    message(FATAL_ERROR "install test: isocxx -show ${ARGN} (${rc}) does not show ${what}")
  endif()
endfunction()

if(MODE STREQUAL "install")
  file(REMOVE_RECURSE "${PREFIX}")
  step("install the build into ${PREFIX}"
       ${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${PREFIX}" --config "${build_type}")
  message(STATUS "install test: installed")
  return()
endif()

file(REMOVE_RECURSE "${BUILD}")
file(MAKE_DIRECTORY "${BUILD}")
if(MODE STREQUAL "cmake")
  step("configure ${SOURCE}"
       ${CMAKE_COMMAND} -S "${SOURCE}" -B "${BUILD}" -G "${GENERATOR}" "-DCMAKE_BUILD_TYPE=${build_type}"
       "-DCMAKE_PREFIX_PATH=${PREFIX}" -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON ${CMAKE_ARGS})
  if(CHECK_PACKAGE_DIR)
    # find_package must have used the installed config, not one in the build or source tree.
    file(STRINGS "${BUILD}/CMakeCache.txt" found_dir REGEX "^isothreads_DIR:")
    string(REGEX REPLACE "^isothreads_DIR:[A-Z]+=" "" found_dir "${found_dir}")
    file(REAL_PATH "${PREFIX}" real_prefix)
    file(REAL_PATH "${found_dir}" real_found)
    string(FIND "${real_found}/" "${real_prefix}/" at)
    if(NOT at EQUAL 0)
      message(FATAL_ERROR "install test: find_package(isothreads) used ${found_dir}, not the install prefix ${PREFIX}")
    endif()
  endif()
  step("build ${SOURCE}" ${CMAKE_COMMAND} --build "${BUILD}" --config "${build_type}" --parallel 2)
elseif(MODE STREQUAL "make")
  if(CHECK_SHOW)
    # Compile only: the include directory, and nothing after the source but MPI's include
    # directories. Linking: C++17 raised to C++20, the program's objects first, then the
    # archives in dependency order, Boost.Context, MPI last.
    file(REAL_PATH "${PREFIX}" real_prefix)
    check_show("the include directory and no libraries"
               "-I${real_prefix}/include .*-c app\\.cpp( -I[^ ]+)*$" -c app.cpp)
    check_show("the archives after the objects, in order"
               "-std=c\\+\\+20 app\\.o -o app [^ ]*/libisothreads_runtime\\.a [^ ]*/libisothreads_migrate\\.a [^ ]*/libisothreads_threads\\.a [^ ]*/libisothreads_comm\\.a [^ ]*/libisothreads_isomalloc\\.a .*boost_context.* -lmpi"
               -std=c++17 app.o -o app)
  endif()
  step("make -f ${SOURCE}/Makefile"
       ${CMAKE_COMMAND} -E env "PATH=${PREFIX}/${BINDIR}:$ENV{PATH}"
                               "PKG_CONFIG_PATH=${PREFIX}/${LIBDIR}/pkgconfig"
       ${MAKE_ENV} "${MAKE_PROGRAM}" -C "${BUILD}" -f "${SOURCE}/Makefile")
else()
  message(FATAL_ERROR "consumer.cmake: unknown MODE ${MODE}")
endif()

foreach(program IN LISTS RUN)
  set(exe "${BUILD}/${program}")
  if(NOT EXISTS "${exe}")
    set(exe "${BUILD}/${build_type}/${program}")  # multi-config generators
  endif()
  step("run ${program} on 2 ranks" ${MPIEXEC} ${MPIEXEC_FLAGS} "${exe}")
endforeach()
message(STATUS "install test: passed")
