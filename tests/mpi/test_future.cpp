// iso::async and iso::future under iso::runtime: values of every supported kind travel from the
// producer to whichever thread calls get(), wherever either runs; exceptions surface as
// iso::error(thread_failed); futures are move-only, got once, and can be dropped.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "engine.hpp"
#include "isothreads/isothreads.hpp"
#include "mailbox.hpp"
#include "mpi_gtest.hpp"
#include "scheduler.hpp"

namespace {

using iso_test::rt;

static_assert(!std::is_copy_constructible_v<iso::future<int>>);
static_assert(!std::is_copy_assignable_v<iso::future<int>>);
static_assert(std::is_nothrow_move_constructible_v<iso::future<int>>);

struct point {
  double x;
  int rank;
};

TEST(Future, ValuesOfEveryKindTravelBetweenRanks) {
  if (rt->rank() == 0) {
    iso::spawn([] {
      const int last = iso::size() - 1;
      iso::future<point> p = iso::async([last] {
        iso::this_thread::migrate_to(last);
        return point{2.5, iso::rank()};
      });
      iso::future<std::string> s = iso::async([] {
        iso::this_thread::migrate_to(1);
        return std::string(10000, 'q') + "end";
      });
      iso::future<std::vector<double>> v = iso::async([last] {
        std::vector<double> out(5000);
        for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<double>(i) / 4;
        iso::this_thread::migrate_to(last);
        return out;
      });
      const iso::thread_id me = iso::this_thread::id();
      iso::future<void> done = iso::async([me] {
        iso::this_thread::migrate_to(1);
        iso::send(me, "before returning", 16);
      });
      EXPECT_TRUE(p.valid() && s.valid() && v.valid() && done.valid());
      iso::this_thread::migrate_to(1 % iso::size());  // the getter moves too
      const point got = p.get();
      EXPECT_EQ(got.x, 2.5);
      EXPECT_EQ(got.rank, last);  // computed there
      EXPECT_FALSE(p.valid());
      const std::string str = s.get();
      EXPECT_EQ(str.size(), 10003u);
      EXPECT_EQ(str.substr(9998), "qqend");
      iso::this_thread::migrate_to(0);
      const std::vector<double> vec = v.get();
      ASSERT_EQ(vec.size(), 5000u);
      for (std::size_t i = 0; i < vec.size(); ++i) ASSERT_EQ(vec[i], static_cast<double>(i) / 4);
      done.get();
      // get() returned after the body did: what the body sent before returning is here.
      EXPECT_TRUE(iso::try_recv().has_value());
      EXPECT_FALSE(done.valid());
    });
  }
  rt->run();
}

TEST(Future, AnExceptionInTheBodySurfacesAsThreadFailed) {
  if (rt->rank() == 0) {
    iso::spawn([] {
      iso::future<int> f = iso::async([]() -> int {
        iso::this_thread::migrate_to(iso::size() - 1);
        throw std::runtime_error("boom on rank " + std::to_string(iso::rank()));
      });
      try {
        f.get();
        ADD_FAILURE() << "get() of a body that threw must throw";
      } catch (const iso::error& e) {
        EXPECT_EQ(e.code_value(), iso::errc::thread_failed);
        EXPECT_EQ(std::string(e.what()), "boom on rank " + std::to_string(iso::size() - 1));
      }
      EXPECT_FALSE(f.valid());
      try {
        f.get();  // once only
        ADD_FAILURE() << "a second get() must throw";
      } catch (const iso::error& e) {
        EXPECT_EQ(e.code_value(), iso::errc::invalid_argument);
        EXPECT_NE(std::string(e.what()).find("get() was called already"), std::string::npos) << e.what();
      }
      iso::future<void> g = iso::async([] { throw 42; });
      try {
        g.get();
        ADD_FAILURE() << "get() of a body that threw must throw";
      } catch (const iso::error& e) {
        EXPECT_EQ(e.code_value(), iso::errc::thread_failed);
      }
    });
  }
  rt->run();
}

TEST(Future, MovedToAnotherThreadTheValueGoesThere) {
  if (rt->rank() == 0) {
    iso::spawn([] {
      iso::future<int> f = iso::async([] {
        iso::this_thread::migrate_to(iso::size() - 1);
        return 7;
      });
      iso::future<int> moved;
      EXPECT_FALSE(moved.valid());
      moved = std::move(f);
      EXPECT_FALSE(f.valid());
      EXPECT_TRUE(moved.valid());
      const iso::thread_id getter = iso::spawn([m = std::move(moved)]() mutable {
        iso::this_thread::migrate_to(1);
        EXPECT_EQ(m.get(), 7);
      });
      EXPECT_FALSE(moved.valid());
      iso::join(getter);
    });
  }
  rt->run();
}

TEST(Future, DroppedFuturesAndMisuse) {
  int before_run = 0;
  {
    iso::future<int> from_main = iso::async([] { return 1; });
    try {
      from_main.get();  // main is not a migratable thread
      ADD_FAILURE() << "get() from main must throw";
    } catch (const iso::error& e) {
      EXPECT_EQ(e.code_value(), iso::errc::not_in_thread);
    }
    EXPECT_TRUE(from_main.valid());  // still there to be got or dropped
    before_run = 1;
  }  // dropped: its producer must still end, so that run() returns
  iso::spawn([] {
    {
      iso::future<std::string> unused = iso::async([] {
        iso::this_thread::migrate_to(iso::size() - 1);
        return std::string("nobody asks");
      });
    }
    iso::future<int> none;
    EXPECT_THROW(none.get(), iso::error);
  });
  rt->run();
  EXPECT_EQ(before_run, 1);
}

// When a future's value or failure is given, against when get() asks (future.cpp's paths).
enum class order {
  get_first,             // get() asks before the producer ran: it answers into the waiting getter
  producer_first,        // the producer waits with its value when get() asks: the getter takes it
  getter_moved_waiting,  // the getter is moved to another rank while it waits in get()
  // The producer waits on another rank, so get() asks by message; the getter is moved there
  // while it waits in get(), and the producer answers into its landing there, without a message.
  getter_moved_to_producer,
};
constexpr order orders[] = {order::get_first, order::producer_first, order::getter_moved_waiting,
                            order::getter_moved_to_producer};

iso::detail::tcb* local_thread(iso::thread_id t) { return iso::detail::scheduler::current()->find(t); }

// From a thread on rank 0: makes a future of `body` in the given order and gives it to check,
// which calls get() (with `at` naming the order, for its messages). The body's thread records its
// id in `producer` (on this rank, before it moves), so that the order can be seen to hold.
template <class R, class Body, class Check>
void in_order_given(order o, const Body& body, const Check& check) {
  const int last = iso::size() - 1;
  const iso::thread_id getter = iso::this_thread::id();
  iso::thread_id producer;
  const bool moves_getter = o == order::getter_moved_waiting || o == order::getter_moved_to_producer;
  iso::future<R> f = iso::async([&producer, o, moves_getter, body, getter, last]() -> R {
    producer = iso::this_thread::id();
    if (o == order::getter_moved_to_producer) iso::this_thread::migrate_to(last);
    if (moves_getter) (void)iso::recv(iso::any_thread, 5);  // the mover's "go"
    if (o == order::getter_moved_to_producer) {
      // The getter left for here before the "go" was sent; it answers here once it has arrived,
      // so that the value goes into its landing, not into a message.
      while (local_thread(getter) == nullptr) iso::this_thread::yield();
      const iso::detail::tcb* g = local_thread(getter);
      EXPECT_EQ(g->wait, iso::detail::wait_reason::recv) << "the getter does not wait in get() here";
      EXPECT_NE(g->mailbox, nullptr) << "the getter came without its mailbox";
    }
    return body();
  });
  if (o == order::get_first) {
    ASSERT_FALSE(producer) << "the producer ran before get()";
  }
  if (o == order::getter_moved_to_producer) {
    while (!producer || local_thread(producer) != nullptr) iso::this_thread::yield();  // it has left
  }
  if (o == order::producer_first) {
    iso::this_thread::yield();  // the producer runs (it is first in the ready queue) and waits
    ASSERT_TRUE(producer) << "the producer did not run first";
    iso::detail::tcb* p = local_thread(producer);
    ASSERT_NE(p, nullptr) << "the producer ended before the ask";
    ASSERT_NE(p->future_offer, nullptr) << "the producer does not wait with its value";
  }
  iso::thread_id mover;
  if (moves_getter) {
    // Once the getter waits in get() (and the producer in its recv), moves it to the last rank,
    // then lets the producer give its value: the value goes there.
    mover = iso::spawn([getter, &producer, last] {
      for (;;) {
        iso::detail::tcb* g = local_thread(getter);
        if (g != nullptr && g->state == iso::detail::thread_state::blocked &&
            g->wait == iso::detail::wait_reason::recv && producer) {
          break;
        }
        iso::this_thread::yield();
      }
      const iso::thread_id p = producer;  // read before the getter moves: it is on its stack
      iso::migrate(getter, last);
      iso::send(p, "go", 2, 5);
    });
  }
  const std::string at = "in order " + std::to_string(static_cast<int>(o));
  check(f, at);
  EXPECT_FALSE(f.valid()) << at;
  if (moves_getter) {
    iso::join(mover);
    EXPECT_EQ(iso::rank(), last) << "the getter did not move while it waited";
    iso::this_thread::migrate_to(0);
  }
}

// Every order, with a value of every kind (large strings and vectors too) and with a failure:
// each reaches the getter once, whole.
TEST(Future, EveryOrderOfGetterAndProducerGivesTheValue) {
  if (rt->rank() == 0) {
    iso::spawn([] {
      for (const order o : orders) {
        in_order_given<point>(o, [] { return point{1.5, 7}; }, [](iso::future<point>& f, const std::string& at) {
          const point p = f.get();
          EXPECT_EQ(p.x, 1.5) << at;
          EXPECT_EQ(p.rank, 7) << at;
        });
        in_order_given<std::string>(o, [] { return std::string(100000, 's') + "end"; },
                                    [](iso::future<std::string>& f, const std::string& at) {
          const std::string s = f.get();
          ASSERT_EQ(s.size(), 100003u) << at;
          EXPECT_EQ(s.substr(99998), "ssend") << at;
          EXPECT_EQ(std::count(s.begin(), s.end(), 's'), 100000) << at;
        });
        in_order_given<std::vector<double>>(o, [] {
          std::vector<double> v(50000);
          for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i) * 0.5;
          return v;
        }, [](iso::future<std::vector<double>>& f, const std::string& at) {
          const std::vector<double> v = f.get();
          ASSERT_EQ(v.size(), 50000u) << at;
          for (std::size_t i = 0; i < v.size(); ++i) ASSERT_EQ(v[i], static_cast<double>(i) * 0.5) << at;
        });
        in_order_given<void>(o, [] {}, [](iso::future<void>& f, const std::string&) { f.get(); });
        in_order_given<int>(o, []() -> int { throw std::runtime_error("failed in order"); },
                            [](iso::future<int>& f, const std::string& at) {
          try {
            (void)f.get();
            ADD_FAILURE() << "get() of a body that threw must throw, " << at;
          } catch (const iso::error& e) {
            EXPECT_EQ(e.code_value(), iso::errc::thread_failed) << at;
            EXPECT_EQ(std::string(e.what()), "failed in order") << at;
          }
        });
      }
    });
  }
  rt->run();
}

// A thread that drops a future whose producer is on another rank sends it an unsequenced ask,
// which uses no sequence counter: no mailbox is made for the thread.
TEST(Future, ADropToAnotherRankMakesNoMailbox) {
  if (rt->rank() == 0) {
    iso::spawn([] {
      iso::future<int> f = iso::async([] { return 7; });
      iso::this_thread::migrate_to(iso::size() - 1);  // the producer stays on rank 0
      iso::detail::tcb* self = iso::detail::scheduler::current()->running();
      ASSERT_EQ(self->mailbox, nullptr);
      f = iso::future<int>();  // drops it: an ask "drop" to rank 0
      EXPECT_EQ(self->mailbox, nullptr) << "dropping a future made the thread a mailbox";
    });
  }
  rt->run();
}

// The calling thread's sequence-table entries: one per peer it may still exchange numbered
// messages with (mailbox.hpp).
std::size_t my_sequence_entries() {
  return iso::detail::sequence_entries(iso::detail::scheduler::current()->running());
}

// The most entries the getter of the test below had, written on rank 0 after it moved back there.
std::size_t g_most_entries = 0;

// A numbered message of a talker: which talker, and its number in the talker's stream.
struct talk {
  int talker;
  int k;
};

// Records of finished threads that a join may still ask about, on this rank (their home).
std::size_t finished_records() { return iso::detail::engine::current()->finished_records().size(); }

// One thread takes 100,000 futures (each a new producer thread; some move to another rank before
// or after the ask, some send it a message first) while long-lived talkers on the other ranks keep
// sending it numbered messages and it keeps answering them, all migrating: its sequence tables
// stay bounded by the peers that keep talking (they grew by two entries a future), every talker's
// messages arrive in order, each once, and the producers' home keeps no record of them once they
// end (it kept one each, for a join that cannot come).
TEST(Future, AHundredThousandFuturesLeaveTheGettersSequenceTablesBounded) {
  constexpr int futures = 100000;
  constexpr int talks_each = 200;
  const std::size_t records_before = finished_records();
  if (rt->rank() == 0) {
    iso::spawn([] {
      const int ranks = iso::size();
      const iso::thread_id me = iso::this_thread::id();
      std::vector<iso::thread_id> talkers;
      for (int r = 1; r < ranks; ++r) {
        const int index = static_cast<int>(talkers.size());
        talkers.push_back(iso::spawn([me, index, r, ranks] {
          iso::this_thread::migrate_to(r);
          for (int k = 0; k < talks_each; ++k) {
            const talk t{index, k};
            iso::send(me, &t, sizeof t, 7);
            // Waits for the answer: the getter sends to this peer as often as it hears from it.
            const iso::message m = iso::recv(me, 8);
            EXPECT_EQ(m.data.size(), sizeof(int));
            if (k % 50 == 49) iso::this_thread::migrate_to((iso::rank() + 1) % ranks);
          }
        }));
      }
      std::vector<int> next(talkers.size(), 0);
      const auto hear = [&](const iso::message& m) {
        talk t{};
        ASSERT_EQ(m.data.size(), sizeof t);
        std::memcpy(&t, m.data.data(), sizeof t);
        ASSERT_GE(t.talker, 0);
        ASSERT_LT(t.talker, static_cast<int>(talkers.size()));
        EXPECT_EQ(t.k, next[t.talker]) << "talker " << t.talker;
        next[t.talker] = t.k + 1;
        EXPECT_EQ(m.from, talkers[t.talker]);
        iso::send(m.from, &t.k, sizeof t.k, 8);
      };
      std::size_t most = 0;
      const int other = ranks - 1;
      for (int i = 0; i < futures; ++i) {
        const int kind = i % 1000;
        iso::future<int> f = iso::async([me, i, kind, other] {
          if (kind == 1 || kind == 2) iso::this_thread::migrate_to(other);  // answers from there
          if (kind == 3 || kind == 2) iso::send(me, &i, sizeof i, 9);       // a message before the value
          return 3 * i;
        }, {});
        if (kind == 1) iso::this_thread::yield();  // the producer leaves before the ask
        ASSERT_EQ(f.get(), 3 * i);
        if (kind == 2 || kind == 3) {
          const std::optional<iso::message> before = iso::try_recv(iso::any_thread, 9);
          ASSERT_TRUE(before.has_value()) << "future " << i << ": its body's message is not there";
          int got = -1;
          std::memcpy(&got, before->data.data(), sizeof got);
          EXPECT_EQ(got, i);
        }
        while (std::optional<iso::message> m = iso::try_recv(iso::any_thread, 7)) hear(*m);
        if (i % 20000 == 19999) iso::this_thread::migrate_to((iso::rank() + 1) % ranks);
        most = std::max(most, my_sequence_entries());
      }
      for (std::size_t t = 0; t < talkers.size(); ++t) {
        while (next[t] < talks_each) hear(iso::recv(talkers[t], 7));
      }
      for (const iso::thread_id t : talkers) iso::join(t);
      iso::this_thread::migrate_to(0);
      g_most_entries = most;
    });
  }
  rt->run();
  // Two entries a talker (what it sends, what it is sent), and none left by the futures.
  if (rt->rank() == 0) {
    EXPECT_LE(g_most_entries, 2 * static_cast<std::size_t>(rt->size() - 1))
        << "the getter's sequence tables grew with its futures";
  }
  // Rank 0 is the home of the getter, which nobody joins: one record.
  EXPECT_LE(finished_records() - records_before, rt->rank() == 0 ? 1u : 0u) << "records of ended producers kept";
}

}  // namespace
