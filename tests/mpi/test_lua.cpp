// A hardened system library inside a migratable thread: Debian's liblua5.4 (built with
// -fstack-protector-strong and _FORTIFY_SOURCE; every Lua error is a longjmp to the setjmp of
// the pcall that catches it, coroutine.yield from C is one too). A Lua state created inside a
// thread calls migrate() from scripts, and errors raised after a migration, in Lua and in C, are
// caught by a pcall entered on the rank before. Every test is collective.
#include <gtest/gtest.h>
#include <lua.hpp>

#include <cstdio>

#include "isothreads/isomalloc.h"
#include "isothreads/isothreads.hpp"
#include "mpi_gtest.hpp"
#include "thread_checks.hpp"

#if !defined(__SSP_STRONG__) || !defined(__OPTIMIZE__) || !defined(_FORTIFY_SOURCE) || _FORTIFY_SOURCE < 2
#error "test_lua.cpp must be built with -fstack-protector-strong -D_FORTIFY_SOURCE=2 (and -O2)"
#endif

namespace {

using iso_test::check;
using iso_test::check_eq;
using iso_test::rt;

// migrate(dest) -> the rank it returned on. An iso::error becomes a Lua error (raised once the
// C++ exception is gone: a longjmp must not cross a live one).
int lua_migrate(lua_State* L) {
  const int dest = static_cast<int>(luaL_checkinteger(L, 1));
  char why[256] = "";
  try {
    iso::this_thread::migrate_to(dest);
  } catch (const iso::error& e) {
    std::snprintf(why, sizeof why, "%s", e.what());
  }
  if (why[0] != '\0') return luaL_error(L, "%s", why);
  lua_pushinteger(L, iso::rank());
  return 1;
}

// fail_on(dest): moves to dest, then raises an error from C there.
int lua_fail_on(lua_State* L) {
  lua_migrate(L);
  return luaL_error(L, "C error on rank %d", iso::rank());
}

int lua_rank(lua_State* L) {
  lua_pushinteger(L, iso::rank());
  return 1;
}

int lua_size(lua_State* L) {
  lua_pushinteger(L, iso::size());
  return 1;
}

// Walks every rank three times: each hop inside a pcall entered on the rank before, which returns
// normally, or catches an error raised after the hop, in Lua or in C; then a coroutine that migrates between its resumes. Returns the number
// of hops.
constexpr const char* script = R"lua(
local n, start, hops = size(), rank(), 0
for _ = 1, n do
  local dest = (rank() + 1) % n
  local ok, here = pcall(migrate, dest)  -- no error: liblua's own frames return on the next rank
  assert(ok and here == dest, "pcall(migrate): " .. tostring(here))
  hops = hops + 1

  dest = (rank() + 1) % n
  local ok, err = pcall(function()
    local here = migrate(dest)
    assert(here == dest, "migrate returned on rank " .. here)
    error("raised on rank " .. rank(), 0)
  end)
  assert(not ok, "pcall returned success")
  assert(err == "raised on rank " .. dest, "pcall caught: " .. tostring(err))
  hops = hops + 1

  dest = (rank() + 1) % n
  ok, err = pcall(fail_on, dest)
  assert(not ok and err == "C error on rank " .. dest, "pcall of fail_on caught: " .. tostring(err))
  hops = hops + 1
end
assert(rank() == start, "back at rank " .. rank() .. " instead of " .. start)

local co = coroutine.create(function(dest)
  local there = migrate(dest)
  local dest2 = coroutine.yield(there)
  error("coroutine failed on rank " .. migrate(dest2), 0)
end)
local first = (rank() + 1) % n
local ok, there = coroutine.resume(co, first)
assert(ok and there == first, "first resume: " .. tostring(there))
local second = (rank() + 1) % n
local ok2, err = coroutine.resume(co, second)
assert(not ok2 and err == "coroutine failed on rank " .. second, "second resume: " .. tostring(err))
assert(coroutine.status(co) == "dead")
return hops + 2
)lua";

TEST(Lua, ErrorsAndCoroutinesCrossMigrationsInsideAHardenedLibrary) {
  iso::spawn([] {
    lua_State* L = luaL_newstate();
    check(L != nullptr, "luaL_newstate");
    if (L == nullptr) return;
    check(iso_in_range(L) == 1, "the Lua state lives in the thread's heap");
    luaL_openlibs(L);
    lua_register(L, "migrate", lua_migrate);
    lua_register(L, "fail_on", lua_fail_on);
    lua_register(L, "rank", lua_rank);
    lua_register(L, "size", lua_size);
    const int status = luaL_loadstring(L, script) == LUA_OK ? lua_pcall(L, 0, 1, 0) : LUA_ERRSYNTAX;
    if (status != LUA_OK) {
      check(false, lua_tostring(L, -1));
    } else {
      check_eq(lua_tointeger(L, -1), lua_Integer{3 * iso::size() + 2}, "hops the script made");
    }
    lua_close(L);
  });
  rt->run();
}

}  // namespace
