// Every call of the public headers (runtime/include/isothreads/isothreads.hpp and
// isomalloc/include/isothreads/isomalloc.h), spelled as they spell it, used once for real:
// programs outside this repository are written against exactly these names and meanings.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstring>
#include <string>
#include <type_traits>
#include <unordered_set>

#include "isothreads/isomalloc.h"
#include "isothreads/isothreads.hpp"
#include "mpi_gtest.hpp"

namespace {

using iso_test::rt;

static_assert(std::is_trivially_copyable_v<iso::thread_id>);
static_assert(std::is_base_of_v<std::system_error, iso::error>);

TEST(Api, TheContractAsWritten) {
  EXPECT_EQ(rt->rank(), iso::rank());
  EXPECT_EQ(rt->size(), iso::size());
  EXPECT_FALSE(iso::thread_id{});  // a default-constructed id names no thread
  std::unordered_set<iso::thread_id> ids;

  const int dest = (rt->rank() + 1) % rt->size();
  iso::thread_id receiver = iso::spawn([] {
    iso::message m = iso::recv();  // m.from, m.tag, m.data
    EXPECT_TRUE(m.from);
    EXPECT_EQ(m.tag, 0);  // the default tag
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(m.data.data()), m.data.size()), "hello");
  });
  ids.insert(receiver);
  iso::thread_id t = iso::spawn(
      [receiver, dest] {
        const iso::thread_id me = iso::this_thread::id();
        iso::this_thread::yield();
        iso::this_thread::sleep_for(std::chrono::milliseconds(1));
        iso::this_thread::migrate_to(dest);
        EXPECT_EQ(iso::rank(), dest);
        EXPECT_EQ(iso::this_thread::id(), me);  // stable across migrations
        iso::send(receiver, "hello", 5);
        iso::join(receiver);
        iso::lb::sync();
      },
      iso::spawn_options{.stack_bytes = 128 << 10, .name = "api"});
  ids.insert(t);
  EXPECT_EQ(ids.size(), 2u);
  iso::migrate(receiver, rt->rank());  // dest == this rank: nothing moves
  iso::lb::set_strategy(iso::lb::greedy());
  rt->run();

  try {
    iso::migrate(t, rt->size());  // t has finished, and the rank is bad: an iso::error either way
    ADD_FAILURE() << "iso::migrate of a finished thread to a bad rank must throw";
  } catch (const iso::error& e) {
    EXPECT_NE(std::string(e.what()), "");
  }
}

TEST(Api, CheckpointFromEveryThread) {
  char dir[] = "/tmp/iso-api-ckpt-XXXXXX";
  if (rt->rank() == 0) {
    ASSERT_NE(mkdtemp(dir), nullptr);
  }
  MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
  iso::spawn([d = std::string(dir)] { iso::checkpoint(d); });
  rt->run();
  if (rt->rank() == 0) {
    const std::string manifest = std::string(dir) + "/manifest";
    FILE* f = std::fopen(manifest.c_str(), "rb");
    EXPECT_NE(f, nullptr) << "no manifest in " << dir;
    if (f != nullptr) std::fclose(f);
  }
}

TEST(Api, BlockInterfaceAsWritten) {
  EXPECT_EQ(iso_init(MPI_COMM_WORLD), 0);  // the runtime called it already: a repeat is fine
  void* block = iso_malloc(10000);
  ASSERT_NE(block, nullptr);
  EXPECT_GE(iso_length(block), 10000u);
  EXPECT_EQ(iso_in_range(block), 1);
  void* sys = std::malloc(16);
  EXPECT_EQ(iso_in_range(sys), 0);
  std::free(sys);
  std::vector<unsigned char> image(iso_pack_size(block));
  EXPECT_EQ(iso_pack(block, image.data(), image.size()), image.size());
  iso_detach(block);
  EXPECT_EQ(iso_unpack(image.data(), image.size()), block);  // the same address
  iso_free(block);
}

}  // namespace
