# cmake -P script behind the test boundaries.modules: the module boundaries hold.
#   MODULES       name:used,used|name:...  every module, in the order added, with the lower
#                 modules whose interface it declared it uses (iso_add_module's USES)
#   INCLUDES_DIR  holds <name>.includes, the include directories of each module's target
#   SOURCE_DIR    the source tree
# Each breach is named, and any fails the test:
#   - a module's target has another module's src/ on its include path;
#   - a file of a module includes ("..." or <isothreads/...>) a header found neither in its own
#     module nor in the internal/ or include/ of a module it uses (".." components may not lead
#     out of the directory the header is found in). A module's own src/ counts only
#     for its src/ files: its internal/ and include/ headers are read by the modules above, which
#     cannot see its src/.
string(REPLACE "|" ";" MODULES "${MODULES}")
set(names "")
foreach(entry IN LISTS MODULES)
  string(REGEX REPLACE ":.*" "" name "${entry}")
  list(APPEND names ${name})
endforeach()

function(starts_with out text prefix)
  string(FIND "${text}" "${prefix}" at)
  if(at EQUAL 0)
    set(${out} TRUE PARENT_SCOPE)
  else()
    set(${out} FALSE PARENT_SCOPE)
  endif()
endfunction()

set(breaches "")
set(checked 0)
foreach(entry IN LISTS MODULES)
  string(REGEX REPLACE ":.*" "" name "${entry}")
  string(REGEX REPLACE "^[^:]*:" "" uses "${entry}")
  string(REPLACE "," ";" uses "${uses}")

  file(STRINGS "${INCLUDES_DIR}/${name}.includes" dirs)
  foreach(dir IN LISTS dirs)
    foreach(other IN LISTS names)
      if(NOT other STREQUAL name)
        starts_with(inside "${dir}/" "${SOURCE_DIR}/${other}/src/")
        if(inside)
          list(APPEND breaches "the target of ${name} has ${other}/src on its include path")
        endif()
      endif()
    endforeach()
  endforeach()

  set(visible "")
  foreach(m IN LISTS name uses)
    list(APPEND visible "${SOURCE_DIR}/${m}/internal" "${SOURCE_DIR}/${m}/include")
  endforeach()
  file(GLOB_RECURSE files LIST_DIRECTORIES false
       "${SOURCE_DIR}/${name}/src/*" "${SOURCE_DIR}/${name}/internal/*" "${SOURCE_DIR}/${name}/include/*")
  foreach(file IN LISTS files)
    file(STRINGS "${file}" lines REGEX "^[ \t]*#[ \t]*include[ \t]*(\"|<isothreads/)")
    get_filename_component(here "${file}" DIRECTORY)
    starts_with(in_src "${file}" "${SOURCE_DIR}/${name}/src/")
    foreach(line IN LISTS lines)
      math(EXPR checked "${checked} + 1")
      set(search ${visible})
      if(in_src)
        list(PREPEND search "${SOURCE_DIR}/${name}/src")
      endif()
      if(line MATCHES "\"")
        list(PREPEND search "${here}")  # a quoted include looks beside the including file first
      endif()
      string(REGEX REPLACE "^[^\"<]*[\"<]([^\">]+)[\">].*" "\\1" header "${line}")
      set(found FALSE)
      foreach(dir IN LISTS search)
        # Found only inside the directory searched: ".." components must not lead out of it.
        get_filename_component(path "${dir}/${header}" ABSOLUTE)
        starts_with(inside "${path}" "${dir}/")
        if(inside AND EXISTS "${path}")
          set(found TRUE)
          break()
        endif()
      endforeach()
      if(NOT found)
        set(where "")
        foreach(other IN LISTS names)
          foreach(part src internal include)
            if(EXISTS "${SOURCE_DIR}/${other}/${part}/${header}")
              set(where " (it is in ${other}/${part})")
            endif()
          endforeach()
        endforeach()
        file(RELATIVE_PATH rel "${SOURCE_DIR}" "${file}")
        list(APPEND breaches "${rel} includes \"${header}\", which module ${name} cannot see${where}")
      endif()
    endforeach()
  endforeach()
endforeach()

if(breaches)
  list(JOIN breaches "\n  " text)
  message(FATAL_ERROR "boundaries: broken:\n  ${text}")
endif()
message(STATUS "boundaries: held (${checked} include lines of ${names} checked)")
