// graph_migrate: a thread builds a pointer-rich graph (std::map of std::unique_ptr nodes, each
// holding raw pointers to other nodes and a std::vector of edges), migrates, and verifies on
// arrival that every pointer still leads where it did, at the same address.
//
//   mpirun -n 2 build/examples/graph_migrate
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "isothreads/isothreads.hpp"

namespace {

struct node {
  int id;
  std::string label;
  std::vector<node*> edges;   // raw pointers to other nodes of the same graph
  node* parent = nullptr;     // a spanning tree, also raw
};

using graph = std::map<int, std::unique_ptr<node>>;

// A fingerprint of the graph through its pointers: ids reached, in order, and their addresses.
std::string walk(const graph& g) {
  std::string out;
  for (const auto& [id, n] : g) {
    out += std::to_string(id) + "@" + std::to_string(reinterpret_cast<std::uintptr_t>(n.get())) + ":";
    for (const node* e : n->edges) out += std::to_string(e->id) + ",";
    out += n->parent != nullptr ? std::to_string(n->parent->id) : "root";
    out += "|" + n->label + ";";
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    iso::runtime rt(argc, argv);
    if (rt.rank() == 0) {
      iso::spawn([] {
        graph g;
        std::mt19937 rng(2024);
        for (int i = 0; i < 2000; ++i) g[i] = std::make_unique<node>(node{i, "node-" + std::to_string(i * 7), {}, nullptr});
        for (auto& [id, n] : g) {
          for (int k = 0; k < 4; ++k) n->edges.push_back(g[static_cast<int>(rng() % 2000)].get());
          if (id > 0) n->parent = g[static_cast<int>(rng() % static_cast<unsigned>(id))].get();
        }
        const std::string before = walk(g);
        const node* some = g.at(1234).get();
        std::printf("rank %d: built a graph of %zu nodes, node 1234 at %p\n", iso::rank(), g.size(),
                    static_cast<const void*>(some));
        const int dest = (iso::rank() + 1) % iso::size();
        iso::this_thread::migrate_to(dest);
        const bool same = walk(g) == before && g.at(1234).get() == some;
        std::printf("rank %d: arrived; node 1234 at %p; every pointer %s\n", iso::rank(),
                    static_cast<const void*>(g.at(1234).get()), same ? "intact" : "BROKEN");
        if (!same) std::abort();
      }, {.name = "graph"});
    }
    rt.run();
  } catch (const iso::error& e) {
    std::fprintf(stderr, "graph_migrate: %s\n", e.what());
    return 1;
  }
  return 0;
}
