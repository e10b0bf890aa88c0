// hello_migrate: one thread holding a heap-allocated linked list walks across every rank.
// At each stop it prints the rank, the list's address (which never changes) and its checksum.
//
//   mpirun -n 4 build/examples/hello_migrate
#include <cstdio>
#include <memory>

#include "isothreads/isothreads.hpp"

namespace {

struct node {
  long value;
  std::unique_ptr<node> next;
};

long checksum(const node* n) {
  long sum = 0;
  for (long i = 1; n != nullptr; n = n->next.get(), ++i) sum += i * n->value;
  return sum;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    iso::runtime rt(argc, argv);
    if (rt.rank() == 0) {
      iso::spawn([] {
        // Built inside the thread: every node lives in the thread's heap and travels with it.
        std::unique_ptr<node> head;
        for (long v = 1000; v > 0; --v) head = std::unique_ptr<node>(new node{v, std::move(head)});
        const long expected = checksum(head.get());
        int stack_marker = 42;  // a local: its address must survive the moves too
        for (int hop = 0; hop <= iso::size(); ++hop) {
          const int here = iso::rank();
          const long sum = checksum(head.get());
          std::printf("thread %s on rank %d: list at %p, stack at %p, checksum %ld %s\n",
                      iso::this_thread::id().to_string().c_str(), here, static_cast<void*>(head.get()),
                      static_cast<void*>(&stack_marker), sum, sum == expected ? "(intact)" : "(CORRUPT)");
          std::fflush(stdout);
          if (sum != expected || stack_marker != 42) std::abort();
          iso::this_thread::migrate_to((here + 1) % iso::size());
        }
      }, {.name = "walker"});
    }
    rt.run();
  } catch (const iso::error& e) {
    std::fprintf(stderr, "hello_migrate: %s\n", e.what());
    return 1;
  }
  return 0;
}
