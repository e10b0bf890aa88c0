# isothreads for builds without CMake: isothreads.pc (pkg-config) and the compiler wrappers
# isocxx and isocc (the MPI wrappers plus isothreads' flags). Both give what the CMake target
# isothreads::isothreads gives (and isothreads-blocks.pc what isothreads::blocks gives: the C block
# interface alone, the comm and isomalloc archives):
#   compile: the include directory, the usage requirements of the targets (read from them: the
#            definitions and options every module declares public, Boost's and MPI's);
#   link:    the targets' link options, the module archives in dependency order (runtime,
#            migrate, threads, comm, isomalloc), then Boost.Context, dl, threads, MPI, and the C++
#            runtime for programs linked as C.
# MPI's own flags are in isothreads.pc; the wrappers leave them to the MPI wrapper they call.
# Included from the top-level CMakeLists.txt after the targets are defined.

# Installed files find the installation from where they are: isothreads.pc from its own
# directory (${pcfiledir}), the wrappers from theirs, so that `cmake --install --prefix P` works
# for any P. Absolute install directories are used as they are.
function(iso_path_from_dir out from_dir to_dir)
  if(IS_ABSOLUTE "${to_dir}")
    set(${out} "${to_dir}" PARENT_SCOPE)
  else()
    file(RELATIVE_PATH rel "/${from_dir}" "/${to_dir}")
    string(REGEX REPLACE "/$" "" rel "${rel}")
    set(${out} "${rel}" PARENT_SCOPE)
  endif()
endfunction()
set(ISO_PKGCONFIG_DIR ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# Compile flags, from the targets (transitively: the modules, isothreads::mpi, Boost). The build
# tree's include directories are replaced by the installed one; the compilers' implicit ones
# (e.g. /usr/include, where Boost may live) are left out as CMake leaves them out.
function(iso_compile_flags out_definitions out_options target)
  set(usage "$<TARGET_PROPERTY:${target},INTERFACE_COMPILE_DEFINITIONS>")
  set(${out_definitions} "$<$<BOOL:${usage}>:-D$<JOIN:$<REMOVE_DUPLICATES:${usage}>, -D>>" PARENT_SCOPE)
  set(${out_options} "$<JOIN:$<REMOVE_DUPLICATES:$<TARGET_PROPERTY:${target},INTERFACE_COMPILE_OPTIONS>>, >" PARENT_SCOPE)
endfunction()
iso_compile_flags(iso_definitions iso_options isothreads)
iso_compile_flags(iso_blocks_definitions iso_blocks_options isothreads_blocks)
set(iso_dependency_includes ${Boost_INCLUDE_DIRS})
list(REMOVE_ITEM iso_dependency_includes ${CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES}
                                         ${CMAKE_C_IMPLICIT_INCLUDE_DIRECTORIES})
list(TRANSFORM iso_dependency_includes PREPEND -I)
list(JOIN iso_dependency_includes " " iso_dependency_includes)
set(iso_mpi_includes ${MPI_C_INCLUDE_DIRS})
list(TRANSFORM iso_mpi_includes PREPEND -I)
list(JOIN iso_mpi_includes " " iso_mpi_includes)

# Link options of the targets and of everything they link, transitively, as CMake applies them
# (e.g. the --export-dynamic-symbol options of threads/), with LINKER: spelled for the compiler
# driver (-Wl,) as CMake spells it.
function(iso_link_options out target)
  set(options "")
  set(seen "")
  set(pending ${target})
  while(pending)
    list(POP_FRONT pending target)
    if(NOT TARGET "${target}" OR target IN_LIST seen)
      continue()
    endif()
    list(APPEND seen "${target}")
    get_target_property(target_options "${target}" INTERFACE_LINK_OPTIONS)
    if(target_options)
      list(APPEND options ${target_options})
    endif()
    get_target_property(libraries "${target}" INTERFACE_LINK_LIBRARIES)
    if(libraries)
      list(APPEND pending ${libraries})
    endif()
  endwhile()
  list(REMOVE_DUPLICATES options)
  list(TRANSFORM options REPLACE "^SHELL:" "")
  list(TRANSFORM options REPLACE "^LINKER:" "${CMAKE_C_LINKER_WRAPPER_FLAG}")
  list(JOIN options " " options)
  set(${out} "${options}" PARENT_SCOPE)
endfunction()
iso_link_options(iso_link_options isothreads)
iso_link_options(iso_blocks_link_options isothreads_blocks)

# Link items after the module archives; bare names (dl, m, stdc++) become -l options.
function(iso_link_flags out)
  set(flags "")
  foreach(item IN LISTS ARGN)
    if(item MATCHES "^-" OR IS_ABSOLUTE "${item}")
      list(APPEND flags "${item}")
    else()
      list(APPEND flags "-l${item}")
    endif()
  endforeach()
  list(JOIN flags " " flags)
  set(${out} "${flags}" PARENT_SCOPE)
endfunction()
set(iso_modules runtime migrate threads comm isomalloc)
set(iso_blocks_modules comm isomalloc)
iso_link_flags(iso_dependency_libs ${ISO_BOOST_CONTEXT_LIBRARY} ${CMAKE_DL_LIBS} ${CMAKE_THREAD_LIBS_INIT})
iso_link_flags(iso_blocks_dependency_libs ${CMAKE_THREAD_LIBS_INIT})
iso_link_flags(iso_mpi_libs ${MPI_C_LINK_FLAGS} ${MPI_C_LIBRARIES})
iso_link_flags(iso_cxx_runtime_libs ${ISO_CXX_RUNTIME_LIBS})

# isothreads.pc. The C++ standard is a variable, not in Cflags: Cflags serve C programs too, and
# a C++ program may use a later standard than the C++20 the headers need.
iso_path_from_dir(ISO_PC_PREFIX ${ISO_PKGCONFIG_DIR} "")
iso_path_from_dir(ISO_PC_LIBDIR "" ${CMAKE_INSTALL_LIBDIR})
iso_path_from_dir(ISO_PC_INCLUDEDIR "" ${CMAKE_INSTALL_INCLUDEDIR})
# iso_write_pc(name description modules cflags libs-before-archives libs-after-archives)
function(iso_write_pc name description modules cflags libs_before libs_after)
  set(ISO_PC_NAME ${name})
  set(ISO_PC_DESCRIPTION "${description}")
  set(archives "")
  foreach(m IN LISTS modules)
    string(APPEND archives " \${libdir}/$<TARGET_LINKER_FILE_NAME:isothreads_${m}>")
  endforeach()
  set(ISO_PC_CFLAGS "${cflags}")
  set(ISO_PC_LIBS "${libs_before}${archives} ${libs_after}")
  configure_file(${CMAKE_CURRENT_LIST_DIR}/isothreads.pc.in ${CMAKE_CURRENT_BINARY_DIR}/${name}.pc.genex @ONLY)
  file(GENERATE OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/pkgconfig/$<CONFIG>/${name}.pc
       INPUT ${CMAKE_CURRENT_BINARY_DIR}/${name}.pc.genex)
  install(FILES ${CMAKE_CURRENT_BINARY_DIR}/pkgconfig/$<CONFIG>/${name}.pc DESTINATION ${ISO_PKGCONFIG_DIR})
endfunction()
iso_write_pc(isothreads "Migratable user-level threads over MPI (C++20); isomalloc blocks (C)" "${iso_modules}"
             "${iso_definitions} ${iso_options} ${iso_dependency_includes} ${iso_mpi_includes}"
             "${iso_link_options}" "${iso_dependency_libs} ${iso_mpi_libs} ${iso_cxx_runtime_libs}")
iso_write_pc(isothreads-blocks "isomalloc blocks over MPI (C), without the threads" "${iso_blocks_modules}"
             "${iso_blocks_definitions} ${iso_blocks_options} ${iso_mpi_includes}"
             "${iso_blocks_link_options}" "${iso_blocks_dependency_libs} ${iso_mpi_libs} ${iso_cxx_runtime_libs}")

# isocxx and isocc, around the MPI compiler wrappers FindMPI used (mpicc) or that sit beside it.
if(NOT MPI_C_COMPILER)
  message(STATUS "isothreads: no MPI compiler wrapper (mpicc) found: isocxx and isocc are not built")
  return()
endif()
get_filename_component(iso_mpi_bin "${MPI_C_COMPILER}" DIRECTORY)
find_program(ISO_MPICXX NAMES mpicxx mpic++ mpiCC HINTS "${iso_mpi_bin}"
             DOC "MPI C++ compiler wrapper that isocxx calls")
iso_path_from_dir(ISO_WRAPPER_PREFIX ${CMAKE_INSTALL_BINDIR} "")
set(ISO_WRAPPER_INCLUDEDIR ${ISO_PC_INCLUDEDIR})
set(ISO_WRAPPER_LIBDIR ${ISO_PC_LIBDIR})
set(ISO_WRAPPER_COMPILE "${iso_definitions} ${iso_options} ${iso_dependency_includes}")
set(ISO_WRAPPER_ARCHIVES "")
foreach(m IN LISTS iso_modules)
  string(APPEND ISO_WRAPPER_ARCHIVES " \"\$libdir/$<TARGET_LINKER_FILE_NAME:isothreads_${m}>\"")
endforeach()
# One template, two wrappers: (name, MPI wrapper, environment variable to pick another one,
# language standard put first, link items after the archives).
function(iso_add_wrapper name mpi_wrapper mpi_variable std libs)
  set(ISO_WRAPPER_NAME ${name})
  set(ISO_WRAPPER_MPI ${mpi_wrapper})
  set(ISO_WRAPPER_MPI_VARIABLE ${mpi_variable})
  set(ISO_WRAPPER_STD ${std})
  set(ISO_WRAPPER_LIBS "${libs}")
  configure_file(${CMAKE_CURRENT_LIST_DIR}/isowrapper.in ${CMAKE_CURRENT_BINARY_DIR}/${name}.genex @ONLY)
  file(GENERATE OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/bin/$<CONFIG>/${name}
       INPUT ${CMAKE_CURRENT_BINARY_DIR}/${name}.genex
       FILE_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
  install(PROGRAMS ${CMAKE_CURRENT_BINARY_DIR}/bin/$<CONFIG>/${name} DESTINATION ${CMAKE_INSTALL_BINDIR})
endfunction()
iso_add_wrapper(isocc "${MPI_C_COMPILER}" ISO_MPICC "" "${iso_dependency_libs} ${iso_link_options} ${iso_cxx_runtime_libs}")
if(ISO_MPICXX)
  # gnu++20 as CMake's cxx_std_20 gives it (extensions on, the compilers' default); a -std=
  # below C++20 on the command line is raised to C++20 the same way.
  iso_add_wrapper(isocxx "${ISO_MPICXX}" ISO_MPICXX -std=gnu++20 "${iso_dependency_libs} ${iso_link_options}")
else()
  message(STATUS "isothreads: no MPI C++ compiler wrapper beside ${MPI_C_COMPILER}: isocxx is not built")
endif()
