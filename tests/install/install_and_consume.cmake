# cmake -P script run by the CTest test install.find_package (tests/install/CMakeLists.txt):
#   1. cmake --install BUILD_DIR --prefix PREFIX          (PREFIX is emptied first)
#   2. configure and build CONSUMER_SOURCE against PREFIX only (no package registry)
#   3. check that find_package found the package under PREFIX, not the build tree
#   4. MPIEXEC MPIEXEC_FLAGS <consumer binary>              (2 ranks)
# Any failing step fails the test, naming the step; each command's output goes to the test log.
foreach(var BUILD_DIR PREFIX CONSUMER_SOURCE CONSUMER_BUILD GENERATOR C_COMPILER CXX_COMPILER MPIEXEC)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "install_and_consume.cmake: -D${var}=... is required")
  endif()
endforeach()
string(REPLACE "|" ";" MPIEXEC_FLAGS "${MPIEXEC_FLAGS}")
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

file(REMOVE_RECURSE "${PREFIX}" "${CONSUMER_BUILD}")

step("install the build into ${PREFIX}"
     ${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${PREFIX}" --config "${build_type}")

step("configure the consumer against ${PREFIX}"
     ${CMAKE_COMMAND} -S "${CONSUMER_SOURCE}" -B "${CONSUMER_BUILD}" -G "${GENERATOR}"
     "-DCMAKE_BUILD_TYPE=${build_type}"
     "-DCMAKE_C_COMPILER=${C_COMPILER}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
     "-DCMAKE_PREFIX_PATH=${PREFIX}"
     -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON)

# find_package must have used the installed config, not one in the build or source tree.
file(STRINGS "${CONSUMER_BUILD}/CMakeCache.txt" found_dir REGEX "^isothreads_DIR:")
string(REGEX REPLACE "^isothreads_DIR:[A-Z]+=" "" found_dir "${found_dir}")
file(REAL_PATH "${PREFIX}" real_prefix)
file(REAL_PATH "${found_dir}" real_found)
string(FIND "${real_found}/" "${real_prefix}/" at)
if(NOT at EQUAL 0)
  message(FATAL_ERROR "install test: find_package(isothreads) used ${found_dir}, not the install prefix ${PREFIX}")
endif()

step("build the consumer"
     ${CMAKE_COMMAND} --build "${CONSUMER_BUILD}" --config "${build_type}" --parallel 2)

set(consumer "${CONSUMER_BUILD}/consumer")
if(NOT EXISTS "${consumer}")
  set(consumer "${CONSUMER_BUILD}/${build_type}/consumer")  # multi-config generators
endif()
step("run the consumer on 2 ranks" ${MPIEXEC} ${MPIEXEC_FLAGS} "${consumer}")
message(STATUS "install test: passed")
