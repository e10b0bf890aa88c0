// iso::async and iso::future under iso::runtime: values of every supported kind travel from the
// producer to whichever thread calls get(), wherever either runs; exceptions surface as
// iso::error(thread_failed); futures are move-only, got once, and can be dropped.
#include <gtest/gtest.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "isothreads/isothreads.hpp"
#include "mpi_gtest.hpp"

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

}  // namespace
