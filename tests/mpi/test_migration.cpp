// Threads moving between ranks under mpirun: state that survives, messages that follow, joins
// across ranks, and the error paths. Every test is collective: each rank runs it and calls run().
#include <gtest/gtest.h>
#include <mpi.h>
#include <sys/mman.h>
#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "comm.hpp"
#include "engine.hpp"
#include "fault.hpp"
#include "interpose.hpp"
#include "isothreads/isothreads.hpp"
#include "mpi_gtest.hpp"
#include "thread_checks.hpp"

namespace {

using iso_test::allgather_ids;
using iso_test::rt;

// Sends the table of ids to each local thread (its first message).
void hand_out(const std::vector<iso::thread_id>& local, const std::vector<iso::thread_id>& table) {
  for (iso::thread_id t : local) iso::send(t, table.data(), table.size() * sizeof(iso::thread_id));
}

std::vector<iso::thread_id> receive_table() {
  const iso::message m = iso::recv();
  std::vector<iso::thread_id> table(m.data.size() / sizeof(iso::thread_id));
  std::memcpy(table.data(), m.data.data(), m.data.size());
  return table;
}

struct gnode {
  int id;
  gnode* next;   // a ring
  gnode* other;  // a chord across it
};

// Heap buffers of 1 KiB to 9 KiB: their images go as one batched record (at most one eager MPI
// message), split in two eager pieces, and batched again above two (image.hpp, split_image); each
// must arrive whole, hop after hop, on every rank. Returns this rank's engine stats of the run.
iso::detail::engine::stats_t migrate_images_one_or_two_eager_pieces_long() {
  const auto before = iso::detail::engine::current()->stats();
  for (std::size_t bytes = 1024; bytes <= 9216; bytes += 520) {
    iso::spawn([bytes] {
      const int n = iso::size();
      auto* p = static_cast<unsigned char*>(std::malloc(bytes));
      ASSERT_NE(p, nullptr);
      for (std::size_t i = 0; i < bytes; ++i) p[i] = static_cast<unsigned char>(i * 7 + bytes);
      unsigned char on_stack[200];
      for (std::size_t i = 0; i < sizeof on_stack; ++i) on_stack[i] = static_cast<unsigned char>(i ^ bytes);
      for (int hop = 1; hop <= 2 * n; ++hop) {
        iso::this_thread::migrate_to((iso::rank() + 1) % n);
        for (std::size_t i = 0; i < bytes; ++i) {
          ASSERT_EQ(p[i], static_cast<unsigned char>(i * 7 + bytes))
              << "byte " << i << " of " << bytes << " on rank " << iso::rank();
        }
        for (std::size_t i = 0; i < sizeof on_stack; ++i) ASSERT_EQ(on_stack[i], static_cast<unsigned char>(i ^ bytes));
      }
      std::free(p);
    });
  }
  rt->run();
  auto stats = iso::detail::engine::current()->stats();
  stats.departures -= before.departures;
  stats.arrivals -= before.arrivals;
  stats.split -= before.split;
  stats.split_later -= before.split_later;
  return stats;
}

// Whether every rank's next one (the hops above) is on its node, where images of split sizes are
// split (engine::split_to): the same answer on every rank, so that all skip or none does.
bool every_next_rank_splits() {
  int mine = iso::detail::engine::current()->split_to((rt->rank() + 1) % rt->size()) ? 1 : 0, all = 0;
  EXPECT_EQ(MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD), MPI_SUCCESS);
  return all != 0;
}

TEST(Migration, ImagesOneOrTwoEagerPiecesLongArriveWhole) {
  if (!every_next_rank_splits()) GTEST_SKIP() << "ranks on different nodes: images are not split between them";
  const auto stats = migrate_images_one_or_two_eager_pieces_long();
  // Some of each rank's departures went split, and some did not.
  EXPECT_GT(stats.split, 0u);
  EXPECT_LT(stats.split, stats.departures);
}

// The same, with no arrival tested as its header message comes in (fault point arrival.later):
// every split arrival waits in the engine's arrivals for its second piece, and the poll that
// finds it in places the first piece's data (kept in the arrival) and the second's.
TEST(Migration, SplitImagesFinishedByALaterPollArriveWhole) {
  if (!every_next_rank_splits()) GTEST_SKIP() << "ranks on different nodes: images are not split between them";
  iso::detail::fault::arm("arrival.later", 1, 1u << 30);
  const auto stats = migrate_images_one_or_two_eager_pieces_long();
  iso::detail::fault::disarm();
  // Every thread departs from and arrives at each rank equally often, with the same image:
  // this rank received as many split images as it sent, all finished later.
  EXPECT_GT(stats.split, 0u);
  EXPECT_EQ(stats.split_later, stats.split);
  EXPECT_EQ(stats.arrivals, stats.departures);
}

// A split image's second piece a byte short or long (ISO_TEST_SPLIT_PIECE=short or long; run only
// by ctest's faults.split_piece_*_later entries, since it ends the run) that a later poll finds
// in is refused as the one tested as its header arrives is: fatal, naming the piece and the
// thread. arm() is per process: rank 0 sends its first split image so (split_piece.short or
// .long), and rank 1, where it goes, tests no arrival as its header comes in (arrival.later).
TEST(Migration, SplitPieceOfAnotherLengthFinishedByALaterPollIsFatal) {
  const char* kind = std::getenv("ISO_TEST_SPLIT_PIECE");
  if (kind == nullptr) GTEST_SKIP() << "run by ctest's faults.split_piece_*_later entries (it ends the run)";
  ASSERT_TRUE(std::strcmp(kind, "short") == 0 || std::strcmp(kind, "long") == 0) << kind;
  if (!every_next_rank_splits()) GTEST_SKIP() << "ranks on different nodes: images are not split between them";
  const std::string point = std::string("split_piece.") + kind;
  if (rt->rank() == 0) iso::detail::fault::arm(point.c_str());
  if (rt->rank() == 1) iso::detail::fault::arm("arrival.later", 1, 1u << 30);
  migrate_images_one_or_two_eager_pieces_long();
  iso::detail::fault::disarm();
  ADD_FAILURE() << "a split image's second piece a byte " << kind << " was accepted";
}

TEST(Migration, ContainersPointerGraphsAndStackSurviveEveryRank) {
  iso::spawn([] {
    const int n = iso::size();
    std::map<int, std::string> m;
    for (int i = 0; i < 300; ++i) m[i] = std::string(static_cast<std::size_t>(i % 60 + 1), static_cast<char>('a' + i % 26));
    std::vector<double> v(20000);
    v.reserve(v.size() + 1000);  // the pushes below must not move it
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i) * 0.5;
    std::vector<gnode*> ring;
    for (int i = 0; i < 200; ++i) ring.push_back(new gnode{i, nullptr, nullptr});
    for (int i = 0; i < 200; ++i) {
      ring[static_cast<std::size_t>(i)]->next = ring[static_cast<std::size_t>((i + 1) % 200)];
      ring[static_cast<std::size_t>(i)]->other = ring[static_cast<std::size_t>((i * 7) % 200)];
    }
    int on_stack[64];
    for (int i = 0; i < 64; ++i) on_stack[i] = i * i;
    int* into_stack = &on_stack[10];
    const auto* const node_addr = &*m.find(150);
    const double* const v_data = v.data();
    gnode* const head = ring[0];

    auto verify = [&] {
      ASSERT_EQ(m.size(), 300u);
      EXPECT_EQ(&*m.find(150), node_addr);
      for (int i = 0; i < 300; i += 37) EXPECT_EQ(m[i], std::string(static_cast<std::size_t>(i % 60 + 1), static_cast<char>('a' + i % 26)));
      EXPECT_EQ(v.data(), v_data);
      EXPECT_EQ(v[12345], 12345 * 0.5);
      const gnode* g = head;
      for (int i = 0; i < 200; ++i, g = g->next) {
        ASSERT_EQ(g->id, i);
        ASSERT_EQ(g->other->id, (i * 7) % 200);
      }
      EXPECT_EQ(g, head);
      EXPECT_EQ(*into_stack, 100);
      EXPECT_EQ(on_stack[63], 63 * 63);
    };
    verify();
    const int start = iso::rank();
    for (int hop = 1; hop <= 3 * n; ++hop) {
      const int dest = (start + hop * 3 + hop / n) % n;
      iso::this_thread::migrate_to(dest);
      EXPECT_EQ(iso::rank(), dest);
      verify();
      v.push_back(hop);  // keeps allocating and freeing wherever it is
      m.erase(1000 + hop);
    }
    for (gnode* g : ring) delete g;
  });
  rt->run();
}

// A thread travels as its live bytes (image.hpp): of each small page only the blocks carved so
// far, of a large block's first page only its header, of the stack only what lies above the
// saved stack pointer. Blocks carved after an arrival (beyond what travelled, where the rank may
// hold stale bytes of an earlier visit), free lists threaded through the carved part, a medium
// and a large block, and a stack that grows deeper and shrinks between hops must all hold on
// every rank, hop after hop, and the allocator must go on serving and taking back blocks there.
TEST(Migration, PartlyCarvedPagesAndTheStackTopTravelToTheByte) {
  for (int w = 0; w < 2; ++w) {
    iso::spawn([w] {
      const int n = iso::size();
      constexpr std::size_t sizes[] = {16, 48, 112, 320, 720, 2000, 6000, 100000};
      struct block {
        unsigned char* p;
        std::size_t bytes;
        unsigned char fill;
      };
      std::vector<block> live;
      live.reserve(4096);  // never moves: its pages are live all along
      unsigned serial = 0;
      auto add = [&](std::size_t bytes) {
        auto* p = static_cast<unsigned char*>(std::malloc(bytes));
        ASSERT_NE(p, nullptr);
        const auto fill = static_cast<unsigned char>(++serial * 37 + 1);
        std::memset(p, fill, bytes);
        live.push_back({p, bytes, fill});
      };
      auto verify = [&] {
        for (const block& b : live) {
          const unsigned char* bad = std::find_if(b.p, b.p + b.bytes, [&](unsigned char c) { return c != b.fill; });
          ASSERT_EQ(bad, b.p + b.bytes) << "a " << b.bytes << "-byte block changed at byte " << (bad - b.p) << " on rank "
                                        << iso::rank();
        }
      };
      // Deep frames with data of their own, below the stack top that travels, then gone again.
      auto deep = [](auto& self, int depth) -> int {
        volatile int frame[64];
        for (int i = 0; i < 64; ++i) frame[i] = depth * 64 + i;
        const int below = depth == 0 ? 0 : self(self, depth - 1);
        int sum = below;
        for (int i = 0; i < 64; ++i) sum += frame[i] - depth * 64;
        return sum;
      };
      for (std::size_t b : sizes) add(b);
      int on_stack[32];
      for (int i = 0; i < 32; ++i) on_stack[i] = i * 3 + w;
      for (int hop = 1; hop <= 4 * n; ++hop) {
        iso::this_thread::migrate_to((iso::rank() + 1 + hop % (n - 1)) % n);
        verify();
        for (int i = 0; i < 32; ++i) ASSERT_EQ(on_stack[i], i * 3 + w);
        EXPECT_EQ(deep(deep, 20 + hop % 7), 21 * 2016 + (hop % 7) * 2016);
        // Carve past what travelled, and free older blocks into the free lists that travel next.
        for (std::size_t b : sizes) add(b);
        for (std::size_t i = live.size() / 3; i < live.size(); i += 3) {
          std::free(live[i].p);
          live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
        }
        verify();
      }
      for (const block& b : live) std::free(b.p);
    });
  }
  rt->run();
}

TEST(Migration, ZlibStreamFedAcrossRanksMatchesOneShot) {
  if (rt->rank() == 0) {
    iso::spawn([] {
      std::string input;
      for (int i = 0; i < 20000; ++i) input += "line " + std::to_string(i * 7919 % 10007) + " of the stream\n";
      std::vector<unsigned char> one_shot(compressBound(input.size()));
      uLongf one_len = one_shot.size();
      ASSERT_EQ(compress2(one_shot.data(), &one_len, reinterpret_cast<const Bytef*>(input.data()), input.size(), 6), Z_OK);
      one_shot.resize(one_len);

      z_stream zs{};
      ASSERT_EQ(deflateInit(&zs, 6), Z_OK);
      std::vector<unsigned char> out(deflateBound(&zs, input.size()));
      zs.next_out = out.data();
      zs.avail_out = static_cast<uInt>(out.size());
      const std::size_t chunk = input.size() / 16 + 1;
      int hops = 0;
      for (std::size_t off = 0; off < input.size(); off += chunk) {
        zs.next_in = reinterpret_cast<Bytef*>(input.data() + off);
        zs.avail_in = static_cast<uInt>(std::min(chunk, input.size() - off));
        ASSERT_EQ(deflate(&zs, Z_NO_FLUSH), Z_OK);
        iso::this_thread::migrate_to((iso::rank() + 1) % iso::size());  // mid-stream: zlib's state moves
        ++hops;
      }
      ASSERT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
      out.resize(zs.total_out);
      deflateEnd(&zs);
      EXPECT_GE(hops, 16);
      EXPECT_EQ(out, one_shot);
    });
  }
  rt->run();
}

TEST(Migration, MessagesArriveExactlyOnceInOrderWhileThreadsMigrate) {
  static constexpr int per_rank = 8, rounds = 25, peers = 3;
  std::vector<iso::thread_id> local;
  for (int i = 0; i < per_rank; ++i) {
    local.push_back(iso::spawn([] {
      const std::vector<iso::thread_id> ids = receive_table();
      const int total = static_cast<int>(ids.size());
      const int me = static_cast<int>(std::find(ids.begin(), ids.end(), iso::this_thread::id()) - ids.begin());
      ASSERT_LT(me, total);
      std::mt19937 rng(static_cast<unsigned>(me) * 2654435761u);
      const int n = iso::size();
      for (int r = 0; r < rounds; ++r) {
        for (int p = 1; p <= peers; ++p) {
          const int payload[2] = {me, r};
          iso::send(ids[static_cast<std::size_t>((me + p) % total)], payload, sizeof payload, 7);
        }
        if (rng() % 3 == 0) iso::this_thread::migrate_to(static_cast<int>(rng() % static_cast<unsigned>(n)));
      }
      std::map<int, int> next;  // sender -> next round expected
      for (int k = 0; k < rounds * peers; ++k) {
        const iso::message m = iso::recv();
        ASSERT_EQ(m.data.size(), 2 * sizeof(int));
        EXPECT_EQ(m.tag, 7);
        int payload[2];
        std::memcpy(payload, m.data.data(), sizeof payload);
        EXPECT_EQ(m.from, ids[static_cast<std::size_t>(payload[0])]);
        EXPECT_EQ(payload[1], next[payload[0]]++) << "out of order from " << payload[0];
        if (rng() % 4 == 0) iso::this_thread::migrate_to(static_cast<int>(rng() % static_cast<unsigned>(n)));
      }
      ASSERT_EQ(next.size(), static_cast<std::size_t>(peers));
      for (const auto& [from, count] : next) EXPECT_EQ(count, rounds) << "from " << from;
    }));
  }
  const auto before = iso::detail::engine::current()->stats();
  hand_out(local, allgather_ids(local));
  rt->run();
  const auto after = iso::detail::engine::current()->stats();
  EXPECT_EQ(iso::detail::engine::current()->held_messages(), 0u);
  EXPECT_EQ(after.dropped, before.dropped) << "messages to live threads were dropped";
  // The threads did move (each draws migrations from its own fixed seed).
  std::uint64_t departures = after.departures - before.departures, all_departures = 0;
  MPI_Allreduce(&departures, &all_departures, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
  EXPECT_GT(all_departures, 0u);
}

TEST(Migration, ThreadBlockedInRecvIsMovedAndWokenThere) {
  const int dest = 1 % rt->size();
  if (rt->rank() == 0) {
    const iso::thread_id waiter = iso::spawn([dest] {
      const iso::message m = iso::recv();  // blocked here while it is moved
      EXPECT_EQ(iso::rank(), dest);
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(m.data.data()), m.data.size()), "wake up");
    });
    iso::spawn([waiter, dest] {
      iso::migrate(waiter, dest);  // waiter ran first and is blocked in recv now
      iso::this_thread::sleep_for(std::chrono::milliseconds(5));
      iso::send(waiter, "wake up", 7);
    });
  }
  rt->run();
}

TEST(Migration, SleepingThreadIsMovedAndSleepsOnThere) {
  const int dest = rt->size() - 1;
  if (rt->rank() == 0) {
    const iso::thread_id sleeper = iso::spawn([dest] {
      const auto start = std::chrono::steady_clock::now();
      iso::this_thread::sleep_for(std::chrono::milliseconds(40));
      EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(40));
      EXPECT_EQ(iso::rank(), dest);
    });
    iso::spawn([sleeper, dest] { iso::migrate(sleeper, dest); });
  }
  rt->run();
}

TEST(Migration, LockHolderMovesOnceItReleases) {
  iso::mutex m;  // rank-local; the holder uses it only before it moves
  const int dest = 1 % rt->size();
  if (rt->rank() == 0) {
    const iso::thread_id holder = iso::spawn([&m, dest] {
      m.lock();
      for (int i = 0; i < 3; ++i) {
        iso::this_thread::yield();
        EXPECT_EQ(iso::rank(), 0);  // holding the lock: it must not have moved
      }
      m.unlock();
      iso::this_thread::yield();    // the first suspension without the lock: it moves here
      EXPECT_EQ(iso::rank(), dest);
    });
    iso::spawn([holder, dest] { iso::migrate(holder, dest); });
  }
  rt->run();
}

// Set by worker `index` on the rank where it ends (a plain global: each rank's own).
int worker_finished_here[64];
constexpr int worker_hops = 3;

TEST(Migration, JoinAcrossRanksWhileTheTargetMigrates) {
  ASSERT_LE(2 * rt->size(), 64);
  std::fill(std::begin(worker_finished_here), std::end(worker_finished_here), 0);
  std::vector<iso::thread_id> local;
  // Rank r's worker wanders for a while, marks the rank it ends on, and ends there; the previous
  // rank's joiner joins it.
  local.push_back(iso::spawn([] {
    const std::vector<iso::thread_id> ids = receive_table();
    const int n = iso::size();
    const int me = static_cast<int>(std::find(ids.begin(), ids.end(), iso::this_thread::id()) - ids.begin());
    for (int i = 0; i < worker_hops; ++i) {
      iso::this_thread::sleep_for(std::chrono::milliseconds(2));
      iso::this_thread::migrate_to((iso::rank() + 1) % n);
    }
    worker_finished_here[me] = 1;
  }));
  local.push_back(iso::spawn([] {
    const std::vector<iso::thread_id> ids = receive_table();
    const int n = iso::size();
    const int me = static_cast<int>(std::find(ids.begin(), ids.end(), iso::this_thread::id()) - ids.begin());
    const std::size_t target_index = static_cast<std::size_t>((me + 1) % (2 * n)) & ~std::size_t{1};
    const iso::thread_id target = ids[target_index];  // next rank's worker
    iso::this_thread::migrate_to((iso::rank() + 2) % n);  // the joiner moves too
    iso::join(target);
    // Where the target ended (its table index is twice its home rank): it has finished there.
    iso::this_thread::migrate_to((static_cast<int>(target_index / 2) + worker_hops) % n);
    iso_test::check_eq(worker_finished_here[target_index], 1, "the joined worker's last effect");
    try {
      iso::join(target);
      ADD_FAILURE() << "a second join must throw";
    } catch (const iso::error& e) {
      EXPECT_EQ(e.code_value(), iso::errc::already_joined) << e.what();
    }
  }));
  hand_out(local, allgather_ids(local));
  rt->run();
}

// The errc an iso::error thrown by f carries (ok if none); its message must contain `names`.
template <class F>
iso::errc error_of(F&& f, const std::string& names) {
  try {
    f();
  } catch (const iso::error& e) {
    EXPECT_NE(std::string(e.what()).find(names), std::string::npos) << e.what() << " should name " << names;
    return e.code_value();
  }
  return iso::errc::ok;
}

TEST(Migration, ErrorPathsNameTheValueAndLeaveTheThreadRunning) {
  const int n = rt->size();
  EXPECT_EQ(error_of([] { iso::this_thread::migrate_to(0); }, "migrate_to"), iso::errc::not_in_thread);
  EXPECT_EQ(error_of([] { iso::recv(); }, "iso::recv"), iso::errc::not_in_thread);
  EXPECT_EQ(error_of([] { iso::send(iso::thread_id{}, "x", 1); }, "none"), iso::errc::unknown_thread);
  const iso::thread_id far(n + 3, 1);
  EXPECT_EQ(error_of([far] { iso::send(far, "x", 1); }, far.to_string()), iso::errc::unknown_thread);
  EXPECT_EQ(error_of([] { iso::migrate(iso::thread_id(0, 987654321), 0); }, "0:987654321"), iso::errc::unknown_thread);
  const iso::thread_id t = iso::spawn([n] {
    const int here = iso::rank();
    EXPECT_EQ(error_of([] { iso::this_thread::migrate_to(-1); }, "(-1)"), iso::errc::invalid_rank);
    const std::string bad_rank = std::string("(").append(std::to_string(n)).append(")");
    EXPECT_EQ(error_of([n] { iso::this_thread::migrate_to(n); }, bad_rank), iso::errc::invalid_rank);
    EXPECT_EQ(iso::rank(), here);  // still here, still running
    EXPECT_EQ(error_of([] { iso::join(iso::thread_id(0, 987654321)); }, "0:987654321"), iso::errc::unknown_thread);
    EXPECT_EQ(error_of([] { iso::join(iso::this_thread::id()); }, "itself"), iso::errc::already_joined);
    iso::this_thread::migrate_to(here);  // to where it is: nothing moves
    EXPECT_EQ(iso::rank(), here);
  });
  EXPECT_EQ(error_of([t, n] { iso::migrate(t, n + 1); }, std::to_string(n + 1)), iso::errc::invalid_rank);
  EXPECT_EQ(error_of([t] { iso::migrate(t, -2); }, "-2"), iso::errc::invalid_rank);
  rt->run();

  // A message to a thread that has finished is dropped, and counted, not lost silently.
  const auto before = iso::detail::engine::current()->stats().dropped;
  iso::send(t, "late", 4);
  rt->run();
  EXPECT_EQ(iso::detail::engine::current()->stats().dropped, before + 1);
}

// A pointer into a thread heap that lives on another rank (here: one whose pages this rank never
// held) is not freed into memory this rank does not own: it is ignored, counted and reported.
TEST(Migration, FreeOfAPointerWhoseHeapIsElsewhereIsRefused) {
  static std::uint64_t block = 0;  // rank 0's thread leaves its block's address here
  if (rt->rank() == 0) {
    iso::spawn([] { block = reinterpret_cast<std::uintptr_t>(std::malloc(100)); });
  }
  rt->run();
  MPI_Bcast(&block, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  if (rt->rank() == rt->size() - 1) {
    const std::size_t before = iso::detail::interposition_stats().foreign_frees;
    std::free(reinterpret_cast<void*>(block));  // its heap is not on this rank
    EXPECT_EQ(iso::detail::interposition_stats().foreign_frees, before + 1);
  }
}

// A message of more than iso::max_message_bytes is refused before a byte of it is read (here
// none can be: the pages are inaccessible), instead of overflowing the int and u32 sizes of the
// wire; the limit itself is accepted by the check.
TEST(Migration, AMessageOverTheLimitIsRefusedBeforeItIsRead) {
  const std::size_t huge = std::size_t{3} << 30;
  void* pages = mmap(nullptr, huge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  ASSERT_NE(pages, MAP_FAILED);
  const iso::thread_id elsewhere((rt->rank() + 1) % rt->size(), 1);
  for (std::size_t bytes : {huge, iso::max_message_bytes + 1}) {
    try {
      iso::send(elsewhere, pages, bytes);
      ADD_FAILURE() << "a message of " << bytes << " bytes was taken";
    } catch (const iso::error& e) {
      EXPECT_EQ(e.code_value(), iso::errc::invalid_argument);
      EXPECT_NE(std::string(e.what()).find("at most"), std::string::npos) << e.what();
    }
  }
  munmap(pages, huge);
  rt->run();
}

// Gathers whose total passes what one collective can carry go rank by rank in pieces; with
// pieces of a few bytes, that path must give exactly what one collective gives.
TEST(Migration, GathersInPiecesEqualOneCollective) {
  iso::detail::private_comm comm(MPI_COMM_WORLD);
  const int r = rt->rank();
  iso::detail::sys_vector<std::uint32_t> mine(static_cast<std::size_t>(3 * r + 2));
  for (std::size_t i = 0; i < mine.size(); ++i) mine[i] = static_cast<std::uint32_t>(r * 1000 + static_cast<int>(i));
  const auto whole = iso::detail::allgather_all(comm, mine);
  const auto pieces = iso::detail::allgather_all(comm, mine, 7);
  ASSERT_EQ(whole.size(), static_cast<std::size_t>(rt->size()));
  EXPECT_EQ(whole, pieces);
  for (int k = 0; k < rt->size(); ++k) {
    ASSERT_EQ(whole[static_cast<std::size_t>(k)].size(), static_cast<std::size_t>(3 * k + 2));
    EXPECT_EQ(whole[static_cast<std::size_t>(k)].back(), static_cast<std::uint32_t>(k * 1000 + 3 * k + 1));
  }
  const auto at_root = iso::detail::gather_all(comm, mine.data(), mine.size());
  const auto at_root_pieces = iso::detail::gather_all(comm, mine.data(), mine.size(), 5);
  EXPECT_EQ(at_root, at_root_pieces);
  EXPECT_EQ(at_root, r == 0 ? whole : decltype(whole){});
}

// Rounds of spawn, migrate, finish and join, with a balancing step after each: the forwarding
// pointers, tombstones and hints of a round are collected at the next step, and joined threads
// leave no record, so a rank's tables do not grow with the rounds.
TEST(Migration, LocationTablesDoNotGrowWithSpawnMigrateFinishCycles) {
  iso::lb::set_strategy("none");
  constexpr int rounds = 30, per_round = 40;
  const iso::detail::directory& d = iso::detail::engine::current()->locations();
  const std::size_t unjoined_before = d.unjoined_finished();
  std::size_t most_pointers = 0;
  iso::spawn([&most_pointers, &d] {
    for (int r = 0; r < rounds; ++r) {
      std::vector<iso::thread_id> kids;
      for (int i = 0; i < per_round; ++i) {
        kids.push_back(iso::spawn([] { iso::this_thread::migrate_to((iso::rank() + 1) % iso::size()); }));
      }
      for (iso::thread_id k : kids) iso::join(k);
      if (r > 0) most_pointers = std::max(most_pointers, d.pointers());  // round 0 sees earlier tests' too
      iso::lb::sync();
    }
  });
  rt->run();
  // A round leaves at most a pointer per kid that left and a tombstone per kid that ended here.
  EXPECT_LE(most_pointers, static_cast<std::size_t>(2 * per_round));
  EXPECT_EQ(d.pointers(), 0u);
  EXPECT_EQ(d.cached(), 0u);
  EXPECT_EQ(d.locations(), 0u);
  EXPECT_LE(d.unjoined_finished(), unjoined_before + 1);  // the parent, which nobody joined
}

TEST(Migration, RunReturnsOnEveryRankWithNoThreads) {
  rt->run();
  rt->run();
  SUCCEED();
}

}  // namespace
