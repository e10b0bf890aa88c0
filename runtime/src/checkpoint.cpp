#include "checkpoint.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>

#include "checksum.hpp"
#include "diag.hpp"
#include "fault.hpp"
#include "image.hpp"
#include "interpose.hpp"
#include "isothreads/checkpoint.hpp"
#include "prim.hpp"
#include "region.hpp"
#include "stack.hpp"

namespace iso::detail {
namespace {

checkpointer* g_checkpointer = nullptr;

constexpr std::uint64_t file_magic = 0x01544b4350534f49ull;      // "IOSPCKT\x01"
constexpr std::uint64_t manifest_magic = 0x01464e414d534f49ull;  // "IOSMANF\x01"
constexpr std::uint32_t format_version = 2;  // 2: the manifest records the thread guards

struct file_header {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t rank;            // the writer
  std::uint32_t nranks;          // of the writing run
  std::uint32_t nthreads;
  std::uint64_t layout;          // layout fingerprint of the writing binary
  std::uint64_t region_base;
  std::uint64_t region_bytes;
  std::uint64_t generation;
  std::uint64_t table_bytes;     // the table that follows the header
  std::uint64_t data_bytes;      // the extents' bytes that follow the table
  std::uint64_t table_checksum;  // checksum64 of the table
  std::uint64_t header_checksum; // checksum64 of this header with this field 0
};

// Per thread in the table; then its runs, then its extents.
struct thread_record {
  std::uint64_t id;
  std::uint64_t tcb;
  std::uint32_t epoch;
  std::uint32_t nruns;
  std::uint32_t nextents;
  std::uint32_t reserved;
  std::uint64_t data_bytes;
  std::uint64_t data_checksum;   // checksum64 chained over the extents in order
};
struct run_record {
  std::uint64_t addr;
  std::uint64_t chunks;
};

struct manifest_header {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t nranks;
  std::uint64_t layout;
  std::uint64_t region_base;
  std::uint64_t region_bytes;
  std::uint64_t generation;
  std::uint64_t max_serial;      // highest thread serial handed out anywhere
  tls_guards guards;             // the canary and pointer guard the threads ran with (guards.hpp)
  std::uint64_t checksum;        // of this header (field 0) and the entries
};
struct manifest_entry {
  std::uint64_t file_bytes;
  std::uint64_t table_checksum;
};

template <class T>
void append(sys_vector<unsigned char>& out, const T& v) {
  const auto* p = reinterpret_cast<const unsigned char*>(&v);
  out.insert(out.end(), p, p + sizeof v);
}

// Reads a table front to back, refusing to run past its end.
class table_reader {
 public:
  table_reader(const sys_vector<unsigned char>& t, const std::string& file) : t_(t), file_(file) {}
  template <class T>
  T next() {
    if (at_ + sizeof(T) > t_.size()) raise(errc::corrupt_image, "checkpoint file %s: its table ends early", file_.c_str());
    T v;
    std::memcpy(&v, t_.data() + at_, sizeof v);
    at_ += sizeof v;
    return v;
  }
  bool done() const noexcept { return at_ == t_.size(); }

 private:
  const sys_vector<unsigned char>& t_;
  const std::string& file_;
  std::size_t at_ = 0;
};

// Whether [addr, addr + bytes) lies inside one of `extents` (without overflow: an address near
// 2^64 must not wrap to one inside).
bool lies_in(const sys_vector<image_extent>& extents, std::uint64_t addr, std::uint64_t bytes) {
  for (const image_extent& e : extents) {
    const std::uint64_t end = e.addr + e.bytes;  // no wrap: check_thread_record checked each extent
    if (addr >= e.addr && addr <= end && end - addr >= bytes) return true;
  }
  return false;
}

// What the table says of one thread, checked before any of it is used: its runs (claimed for it),
// its extents (where its bytes will be read to: each inside its own runs, or it would overwrite
// the memory of a thread restored before it, after that one's checksum passed) and its control
// block (read to attach the thread). The checksums do not vouch for the addresses: a table
// rewritten with its checksums redone passes them, and the data checksum covers the bytes, not
// where they go. Throws iso::error naming the file, the thread and the problem. Every bound is
// taken without overflow: a value near 2^64 must not wrap to an address inside the region.
void check_thread_record(const std::string& file, const thread_record& rec, const sys_vector<run_record>& runs,
                         const sys_vector<image_extent>& extents) {
  const region& reg = region::get();
  // Named only on the way to a refusal: the table of a large checkpoint has many threads.
  const auto who = [&] { return thread_id::from_bits(rec.id).to_string(); };
  struct span {
    std::uint64_t lo, hi;  // [lo, hi)
  };
  sys_vector<span> spans;
  for (const run_record& run : runs) {
    // chunks bounded first: a huge count would wrap the run's end back into the region.
    const char* why = nullptr;
    if (run.chunks == 0) {
      why = "is empty";
    } else if (run.chunks > reg.bytes() / chunk_bytes || !reg.contains(reinterpret_cast<const void*>(run.addr)) ||
               !reg.contains(reinterpret_cast<const void*>(run.addr + run.chunks * chunk_bytes - 1))) {
      why = "lies outside this job's region";
    } else if (run.addr % chunk_bytes != 0) {
      why = "does not start on a chunk";  // region::claim's precondition: the free lists hold whole chunks
    }
    if (why != nullptr) {
      raise(errc::corrupt_image, "checkpoint file %s: thread %s's run [%#llx, +%llu chunks) %s", file.c_str(), who().c_str(),
            static_cast<unsigned long long>(run.addr), static_cast<unsigned long long>(run.chunks), why);
    }
    spans.push_back({run.addr, run.addr + run.chunks * chunk_bytes});
  }
  // The stack run, which write_rank_file records first: the extents obey a migration image's
  // rules (check_extents) and each lies inside the runs the thread owns.
  const span stack = runs.empty() ? span{0, 0} : spans.front();
  std::sort(spans.begin(), spans.end(), [](const span& a, const span& b) { return a.lo < b.lo; });
  const extent_check c = check_extents(extents.data(), extents.size(), stack.lo, stack.hi);
  std::size_t bad = c.index;
  const char* why = c.why;
  for (std::size_t i = 0; why == nullptr && i < extents.size(); ++i) {
    // Covered by the thread's runs: the last run starting at or below it, then runs that each
    // start where the one before ends.
    const image_extent& e = extents[i];
    auto it = std::upper_bound(spans.begin(), spans.end(), e.addr, [](std::uint64_t a, const span& r) { return a < r.lo; });
    std::uint64_t covered = it == spans.begin() ? e.addr : std::prev(it)->hi;
    while (covered < e.addr + e.bytes && it != spans.end() && it->lo == covered) covered = (it++)->hi;
    if (covered < e.addr + e.bytes) {
      why = "lies outside the runs it owns";
      bad = i;
    }
  }
  if (why != nullptr) {
    raise(errc::corrupt_image, "checkpoint file %s: thread %s's extent %zu [%#llx, +%llu) %s", file.c_str(), who().c_str(),
          bad, static_cast<unsigned long long>(extents[bad].addr), static_cast<unsigned long long>(extents[bad].bytes), why);
  }
  if (!c.stack_top) {
    raise(errc::corrupt_image, "checkpoint file %s: thread %s has no extent that ends at its stack's top", file.c_str(),
          who().c_str());
  }
  if (c.total != rec.data_bytes) {
    raise(errc::corrupt_image, "checkpoint file %s: thread %s's extents sum to %llu bytes, its record says %llu",
          file.c_str(), who().c_str(), static_cast<unsigned long long>(c.total), static_cast<unsigned long long>(rec.data_bytes));
  }
  if (rec.tcb % alignof(tcb) != 0) {
    raise(errc::corrupt_image, "checkpoint file %s: thread %s's control block at %#llx is not %zu-byte aligned",
          file.c_str(), who().c_str(), static_cast<unsigned long long>(rec.tcb), alignof(tcb));
  }
  // Implied by the next check (the extents lie in the region); kept for the clearer message.
  if (rec.tcb > UINT64_MAX - sizeof(tcb)) {
    raise(errc::corrupt_image, "checkpoint file %s: thread %s's control block at %#llx runs past the end of the address space",
          file.c_str(), who().c_str(), static_cast<unsigned long long>(rec.tcb));
  }
  if (!lies_in(extents, rec.tcb, sizeof(tcb))) {
    raise(errc::corrupt_image, "checkpoint file %s: thread %s's control block [%#llx, +%zu) lies outside its restored data",
          file.c_str(), who().c_str(), static_cast<unsigned long long>(rec.tcb), sizeof(tcb));
  }
}

std::string rank_file(const std::string& dir, std::uint64_t generation, int rank) {
  return format("%s/ckpt.%llu.rank%d", dir.c_str(), static_cast<unsigned long long>(generation), rank);
}

std::uint64_t manifest_sum(const manifest_header& h, const manifest_entry* e) {
  manifest_header copy = h;
  copy.checksum = 0;
  return checksum64(e, h.nranks * sizeof(manifest_entry), checksum64(&copy, sizeof copy));
}

std::uint64_t header_sum(const file_header& h) {
  file_header copy = h;
  copy.header_checksum = 0;
  return checksum64(&copy, sizeof copy);
}

// The manifest in dir: throws iso::error naming what is wrong.
struct manifest {
  manifest_header header;
  sys_vector<manifest_entry> entries;
};
manifest read_manifest(const std::string& dir) {
  const std::string path = dir + "/manifest";
  int fd = -1;
  if (int e = prim::file_open(path.c_str(), &fd); e != 0) {
    raise(errc::io_failure, "cannot open checkpoint manifest %s: %s", path.c_str(), std::strerror(e));
  }
  manifest m{};
  std::uint64_t size = 0;
  int e = prim::file_size(fd, &size);
  if (e == 0 && size < sizeof m.header) e = EIO;
  if (e == 0) e = prim::file_read_at(fd, &m.header, sizeof m.header, 0);
  if (e == 0 && (m.header.magic != manifest_magic || m.header.nranks == 0 ||
                 size != sizeof m.header + std::uint64_t{m.header.nranks} * sizeof(manifest_entry))) {
    prim::file_close(fd);
    raise(errc::corrupt_image, "%s is not a checkpoint manifest, or is truncated", path.c_str());
  }
  if (e == 0) {
    m.entries.resize(m.header.nranks);
    e = prim::file_read_at(fd, m.entries.data(), m.entries.size() * sizeof(manifest_entry), sizeof m.header);
  }
  prim::file_close(fd);
  if (e != 0) raise(errc::io_failure, "cannot read checkpoint manifest %s: %s", path.c_str(), std::strerror(e));
  if (m.header.version != format_version) {
    raise(errc::corrupt_image, "checkpoint %s has format version %u, this build reads version %u", dir.c_str(),
          m.header.version, format_version);
  }
  if (m.header.checksum != manifest_sum(m.header, m.entries.data())) {
    raise(errc::corrupt_image, "checkpoint manifest %s is corrupt (checksum mismatch)", path.c_str());
  }
  return m;
}

// Collective: if any rank failed, every rank throws; a rank that did not fail names the first
// rank that did and that rank's message.
void agree(MPI_Comm comm, const std::string& mine, errc code) {
  constexpr int cap = 400;
  int size = 1;
  check_mpi(MPI_Comm_size(comm, &size), "MPI_Comm_size");
  char local[cap] = {};
  std::strncpy(local, mine.c_str(), cap - 1);
  sys_vector<char> all(static_cast<std::size_t>(cap) * static_cast<std::size_t>(size));
  check_mpi(MPI_Allgather(local, cap, MPI_CHAR, all.data(), cap, MPI_CHAR, comm), "MPI_Allgather (checkpoint)");
  if (!mine.empty()) throw error(code, mine);
  for (int r = 0; r < size; ++r) {
    const char* theirs = all.data() + static_cast<std::size_t>(r) * cap;
    if (*theirs != '\0') throw error(code, format("rank %d: %s", r, theirs));
  }
}

}  // namespace

checkpointer::checkpointer(MPI_Comm comm, scheduler& s, engine& e, std::uint64_t layout, verbosity v)
    : sched_(s), engine_(e), comm_(comm), rank_(comm_.rank()), size_(comm_.size()), layout_(layout), verbosity_(v) {
  g_checkpointer = this;
}

checkpointer::~checkpointer() { g_checkpointer = nullptr; }

checkpointer* checkpointer::current() noexcept { return g_checkpointer; }

void checkpointer::request(const std::string& dir) {
  heap_scope system(nullptr);
  if (dir.empty()) raise(errc::invalid_argument, "iso::checkpoint: the directory is empty");
  if (!dir_.empty() && dir_ != dir) {
    raise(errc::invalid_argument, "iso::checkpoint(\"%s\"): other threads of rank %d asked for \"%s\"", dir.c_str(),
          rank_, dir_.c_str());
  }
  dir_ = dir;
}

std::string checkpointer::write_rank_file(std::uint64_t generation) {
  const region& reg = region::get();
  sys_vector<unsigned char> table;
  sys_vector<image_extent> data;  // every extent, in file order
  std::uint32_t nthreads = 0;
  sched_.for_each_thread([&](tcb* t) {
    const sys_vector<unsigned char> image = build_image_header(t, layout_);
    const auto& h = *reinterpret_cast<const image_header*>(image.data());
    sys_vector<run_record> runs{{reinterpret_cast<std::uintptr_t>(t->stack.base), t->stack.bytes / chunk_bytes}};
    t->home_heap->for_each_run([&](void* run, std::size_t chunks) {
      runs.push_back({reinterpret_cast<std::uintptr_t>(run), chunks});
    });
    std::uint64_t sum = 0;
    for (std::uint32_t i = 0; i < h.nextents; ++i) {
      const image_extent& e = image_extents(h)[i];
      sum = checksum64(reinterpret_cast<const void*>(e.addr), e.bytes, sum);
      data.push_back(e);
    }
    append(table, thread_record{t->id.bits(), h.tcb, t->epoch, static_cast<std::uint32_t>(runs.size()), h.nextents, 0,
                                h.data_bytes, sum});
    for (const run_record& r : runs) append(table, r);
    for (std::uint32_t i = 0; i < h.nextents; ++i) append(table, image_extents(h)[i]);
    ++nthreads;
  });
  const auto seqs = engine_.main_sequences();
  append(table, static_cast<std::uint64_t>(seqs.size()));
  for (const auto& [to, next] : seqs) {
    append(table, to);
    append(table, next);
  }
  const auto done = engine_.finished_records();
  append(table, static_cast<std::uint64_t>(done.size()));
  for (const auto& [id, joined] : done) {
    append(table, id);
    append(table, static_cast<std::uint64_t>(joined));
  }
  std::uint64_t data_bytes = 0;
  for (const image_extent& e : data) data_bytes += e.bytes;
  file_header h{file_magic, format_version, static_cast<std::uint32_t>(rank_), static_cast<std::uint32_t>(size_),
                nthreads, layout_, reg.base(), reg.bytes(), generation, table.size(), data_bytes,
                checksum64(table.data(), table.size()), 0};
  h.header_checksum = header_sum(h);

  const std::string path = rank_file(dir_, generation, rank_);
  int fd = -1;
  int e = prim::file_create(path.c_str(), &fd);
  if (e != 0) return format("cannot create %s: %s", path.c_str(), std::strerror(e));
  e = prim::file_write(fd, &h, sizeof h);
  if (e == 0) e = prim::file_write(fd, table.data(), table.size());
  for (std::size_t i = 0; e == 0 && i < data.size(); ++i) {
    e = prim::file_write(fd, reinterpret_cast<const void*>(data[i].addr), data[i].bytes);
  }
  const int c = prim::file_sync_close(fd);
  if (e == 0) e = c;
  if (e != 0) return format("cannot write %s: %s", path.c_str(), std::strerror(e));
  file_bytes_ = sizeof h + table.size() + data_bytes;
  table_sum_ = h.table_checksum;
  return "";
}

std::string checkpointer::write_manifest(std::uint64_t generation, std::uint64_t max_serial,
                                         const sys_vector<std::uint64_t>& files) {
  const region& reg = region::get();
  manifest_header h{manifest_magic, format_version, static_cast<std::uint32_t>(size_), layout_, reg.base(), reg.bytes(),
                    generation, max_serial, sched_.thread_guards(), 0};
  sys_vector<manifest_entry> entries;
  for (int r = 0; r < size_; ++r) entries.push_back({files[2 * static_cast<std::size_t>(r)], files[2 * static_cast<std::size_t>(r) + 1]});
  h.checksum = manifest_sum(h, entries.data());
  const std::string tmp = dir_ + "/manifest.tmp", path = dir_ + "/manifest";
  int fd = -1;
  int e = prim::file_create(tmp.c_str(), &fd);
  if (e == 0) {
    e = prim::file_write(fd, &h, sizeof h);
    if (e == 0) e = prim::file_write(fd, entries.data(), entries.size() * sizeof(manifest_entry));
    const int c = prim::file_sync_close(fd);
    if (e == 0) e = c;
  }
  // The crash test's fault point (fault.hpp): die with the new files written, uncommitted.
  if (fault::hit("checkpoint-before-commit")) ::_exit(3);
  if (e == 0) e = prim::file_commit(tmp.c_str(), path.c_str());
  if (e != 0) return format("cannot write checkpoint manifest %s: %s", path.c_str(), std::strerror(e));
  return "";
}

void checkpointer::step() noexcept {
  heap_scope system(nullptr);
  engine_.collect_locations();  // nothing in flight, every thread waits: see directory::collect
  try {
    failure_.clear();
    // One directory for everyone: rank 0's, checked by all.
    int len = static_cast<int>(dir_.size());
    check_mpi(MPI_Bcast(&len, 1, MPI_INT, 0, comm_), "MPI_Bcast (checkpoint)");
    std::string dir0(static_cast<std::size_t>(len), '\0');
    if (rank_ == 0) dir0 = dir_;
    check_mpi(MPI_Bcast(dir0.data(), len, MPI_CHAR, 0, comm_), "MPI_Bcast (checkpoint)");
    std::string problem;
    if (dir_ != dir0 && !dir_.empty()) {
      problem = format("iso::checkpoint: rank %d's threads asked for \"%s\", rank 0's for \"%s\"", rank_, dir_.c_str(), dir0.c_str());
    }
    dir_ = dir0;
    if (problem.empty()) {
      if (int e = prim::make_directory(dir_.c_str()); e != 0) {
        problem = format("cannot create checkpoint directory %s: %s", dir_.c_str(), std::strerror(e));
      }
    }
    // The next generation: one past the manifest's, if there is a readable one.
    std::uint64_t previous = 0, previous_ranks = 0;
    if (rank_ == 0) {
      try {
        const manifest m = read_manifest(dir_);
        previous = m.header.generation;
        previous_ranks = m.header.nranks;
      } catch (const iso::error&) {
        // none yet, or unusable: start a fresh sequence of generations
      }
    }
    std::uint64_t words[2] = {previous, previous_ranks};
    check_mpi(MPI_Bcast(words, 2, MPI_UINT64_T, 0, comm_), "MPI_Bcast (checkpoint)");
    previous = words[0];
    previous_ranks = words[1];
    const std::uint64_t generation = previous + 1;
    if (problem.empty()) problem = write_rank_file(generation);
    try {
      agree(comm_, problem, errc::io_failure);
    } catch (const iso::error& e) {
      failure_ = e.what();
    }

    if (failure_.empty()) {
      // Rank 0 commits: the manifest names the new files; one rename makes them current.
      std::uint64_t mine[2] = {file_bytes_, table_sum_};
      sys_vector<std::uint64_t> all(2 * static_cast<std::size_t>(size_));
      check_mpi(MPI_Gather(mine, 2, MPI_UINT64_T, all.data(), 2, MPI_UINT64_T, 0, comm_), "MPI_Gather (checkpoint)");
      std::uint64_t max_serial = sched_.next_serial() - 1, global_max = 0;
      check_mpi(MPI_Reduce(&max_serial, &global_max, 1, MPI_UINT64_T, MPI_MAX, 0, comm_), "MPI_Reduce (checkpoint)");
      const std::string commit_problem = rank_ == 0 ? write_manifest(generation, global_max, all) : std::string();
      try {
        agree(comm_, commit_problem, errc::io_failure);
      } catch (const iso::error& e) {
        failure_ = e.what();
      }
    }
    // The previous generation's files are no longer current (or, after a failure, the new ones
    // never became current): remove whichever is not.
    const std::uint64_t stale = failure_.empty() ? previous : generation;
    if (stale != 0) {
      prim::file_remove(rank_file(dir_, stale, rank_).c_str());
      if (rank_ == 0) {
        for (std::uint64_t r = static_cast<std::uint64_t>(size_); r < previous_ranks; ++r) {
          prim::file_remove(rank_file(dir_, stale, static_cast<int>(r)).c_str());
        }
      }
    }
    dir_.clear();
    sched_.wake_all(wait_reason::checkpoint);
    if (rank_ == 0 && failure_.empty() && verbosity_ >= verbosity::steps) {
      std::printf("iso::checkpoint: generation %llu written to %s\n", static_cast<unsigned long long>(generation), dir0.c_str());
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    fatal("checkpoint step failed: %s", e.what());
  }
}

void checkpointer::restore(const std::string& dir) {
  heap_scope system(nullptr);
  const std::int64_t start_ns = now_ns();
  region& reg = region::get();
  std::string problem;
  manifest m{};
  errc code = errc::corrupt_image;
  try {
    m = read_manifest(dir);
    if (m.header.layout != layout_) {
      code = errc::layout_mismatch;
      raise(code, "checkpoint %s was written by a different binary or code layout (fingerprint %#llx, ours %#llx)",
            dir.c_str(), static_cast<unsigned long long>(m.header.layout), static_cast<unsigned long long>(layout_));
    }
    if (m.header.region_base != reg.base()) {
      raise(errc::corrupt_image,
            "checkpoint %s needs the isomalloc region at %#llx (%llu bytes); this run has it at %#zx (%zu bytes): set "
            "ISO_REGION_BYTES as when it was written",
            dir.c_str(), static_cast<unsigned long long>(m.header.region_base),
            static_cast<unsigned long long>(m.header.region_bytes), reg.base(), reg.bytes());
    }
  } catch (const iso::error& e) {
    problem = e.what();
    code = e.code_value();
  }
  agree(comm_, problem, code);

  // Every rank reads every table: it needs every thread's runs to reserve those in its share.
  struct restored {
    thread_record rec;
    sys_vector<run_record> runs;
    sys_vector<image_extent> extents;
    int file;                  // the old rank whose file holds it
    std::uint64_t data_offset; // where its extents' bytes start in that file
  };
  sys_vector<restored> threads;
  sys_vector<std::pair<std::uint64_t, std::uint64_t>> my_sequences;
  sys_vector<std::pair<std::uint64_t, bool>> finished;
  sys_vector<int> fds(m.header.nranks, -1);
  std::uint64_t read = 0;  // data bytes of this rank's threads
  try {
    for (std::uint32_t r = 0; r < m.header.nranks; ++r) {
      const std::string path = rank_file(dir, m.header.generation, static_cast<int>(r));
      if (int e = prim::file_open(path.c_str(), &fds[r]); e != 0) {
        raise(errc::io_failure, "cannot open checkpoint file %s: %s", path.c_str(), std::strerror(e));
      }
      file_header h{};
      std::uint64_t size = 0;
      if (prim::file_size(fds[r], &size) != 0 || size < sizeof h || prim::file_read_at(fds[r], &h, sizeof h, 0) != 0) {
        raise(errc::corrupt_image, "checkpoint file %s is truncated", path.c_str());
      }
      if (h.magic != file_magic || h.header_checksum != header_sum(h)) {
        raise(errc::corrupt_image, "checkpoint file %s is corrupt (bad header)", path.c_str());
      }
      if (h.version != format_version || h.rank != r || h.nranks != m.header.nranks || h.layout != layout_ ||
          h.generation != m.header.generation || h.region_base != m.header.region_base) {
        raise(errc::corrupt_image, "checkpoint file %s does not belong to this checkpoint's generation %llu", path.c_str(),
              static_cast<unsigned long long>(m.header.generation));
      }
      if (size != m.entries[r].file_bytes) {
        raise(errc::corrupt_image, "checkpoint file %s has %llu bytes, the manifest says %llu", path.c_str(),
              static_cast<unsigned long long>(size), static_cast<unsigned long long>(m.entries[r].file_bytes));
      }
      // Bounded without adding: table_bytes and data_bytes near 2^64 must not wrap to size.
      if (h.table_bytes > size - sizeof h || h.data_bytes != size - sizeof h - h.table_bytes) {
        raise(errc::corrupt_image, "checkpoint file %s: its header's table (%llu) and data (%llu) bytes do not make its %llu bytes",
              path.c_str(), static_cast<unsigned long long>(h.table_bytes), static_cast<unsigned long long>(h.data_bytes),
              static_cast<unsigned long long>(size));
      }
      sys_vector<unsigned char> table(h.table_bytes);
      if (prim::file_read_at(fds[r], table.data(), table.size(), sizeof h) != 0) {
        raise(errc::corrupt_image, "checkpoint file %s is truncated", path.c_str());
      }
      if (checksum64(table.data(), table.size()) != h.table_checksum || h.table_checksum != m.entries[r].table_checksum) {
        raise(errc::corrupt_image, "checkpoint file %s is corrupt (table checksum mismatch)", path.c_str());
      }
      table_reader in(table, path);
      std::uint64_t offset = sizeof h + h.table_bytes;
      for (std::uint32_t i = 0; i < h.nthreads; ++i) {
        restored t{in.next<thread_record>(), {}, {}, static_cast<int>(r), offset};
        for (std::uint32_t k = 0; k < t.rec.nruns; ++k) t.runs.push_back(in.next<run_record>());
        for (std::uint32_t k = 0; k < t.rec.nextents; ++k) t.extents.push_back(in.next<image_extent>());
        check_thread_record(path, t.rec, t.runs, t.extents);
        offset += t.rec.data_bytes;
        threads.push_back(std::move(t));
      }
      const auto nseq = in.next<std::uint64_t>();
      for (std::uint64_t k = 0; k < nseq; ++k) {
        const auto to = in.next<std::uint64_t>();
        const auto next = in.next<std::uint64_t>();
        if (static_cast<int>(r) == rank_) my_sequences.emplace_back(to, next);
      }
      const auto nfin = in.next<std::uint64_t>();
      for (std::uint64_t k = 0; k < nfin; ++k) {
        const auto id = in.next<std::uint64_t>();
        const auto joined = in.next<std::uint64_t>();
        finished.emplace_back(id, joined != 0);
      }
      if (!in.done() || offset != size) raise(errc::corrupt_image, "checkpoint file %s: its table does not match its data", path.c_str());
    }
    // One record per thread: two under one id would both be attached (one id, two threads), and a
    // finished record of a live thread would answer its joiners early.
    {
      sys_vector<std::pair<std::uint64_t, int>> ids;  // (id, the old rank whose file holds it)
      for (const restored& t : threads) ids.emplace_back(t.rec.id, t.file);
      std::sort(ids.begin(), ids.end());
      for (std::size_t i = 1; i < ids.size(); ++i) {
        if (ids[i].first == ids[i - 1].first) {
          raise(errc::corrupt_image, "checkpoint %s: thread %s is recorded twice (in %s and %s)", dir.c_str(),
                thread_id::from_bits(ids[i].first).to_string().c_str(),
                rank_file(dir, m.header.generation, ids[i - 1].second).c_str(),
                rank_file(dir, m.header.generation, ids[i].second).c_str());
        }
      }
      for (const auto& [id, joined] : finished) {
        const auto it = std::lower_bound(ids.begin(), ids.end(), std::pair<std::uint64_t, int>{id, -1});
        if (it != ids.end() && it->first == id) {
          raise(errc::corrupt_image, "checkpoint %s: thread %s is recorded both as live and as finished", dir.c_str(),
                thread_id::from_bits(id).to_string().c_str());
        }
      }
    }
    // Reserve every restored run that lies in this rank's share.
    for (const restored& t : threads) {
      for (const run_record& run : t.runs) {
        void* p = reinterpret_cast<void*>(run.addr);  // inside the region (check_thread_record)
        if (reg.owner_of(p) == rank_ && !reg.claim(p, run.chunks)) {
          raise(errc::corrupt_image, "checkpoint %s: thread %s's run [%p, +%llu chunks) overlaps memory in use on rank %d",
                dir.c_str(), thread_id::from_bits(t.rec.id).to_string().c_str(), p,
                static_cast<unsigned long long>(run.chunks), rank_);
        }
      }
    }
    // Read this rank's threads straight into their addresses, and check every byte.
    for (std::size_t k = static_cast<std::size_t>(rank_); k < threads.size(); k += static_cast<std::size_t>(size_)) {
      const restored& t = threads[k];
      read += t.rec.data_bytes;
      std::uint64_t offset = t.data_offset, sum = 0;
      for (const image_extent& e : t.extents) {  // each inside the thread's runs (check_thread_record)
        if (int err = prim::file_read_at(fds[static_cast<std::size_t>(t.file)], reinterpret_cast<void*>(e.addr), e.bytes, offset);
            err != 0) {
          raise(errc::corrupt_image, "cannot read the data of thread %s from checkpoint file %s: %s",
                thread_id::from_bits(t.rec.id).to_string().c_str(), rank_file(dir, m.header.generation, t.file).c_str(),
                std::strerror(err));
        }
        sum = checksum64(reinterpret_cast<const void*>(e.addr), e.bytes, sum);
        offset += e.bytes;
      }
      if (sum != t.rec.data_checksum) {
        raise(errc::corrupt_image, "checkpoint %s: the data of thread %s is corrupt (checksum mismatch)", dir.c_str(),
              thread_id::from_bits(t.rec.id).to_string().c_str());
      }
      // The control block lies, aligned, in the bytes just read (check_thread_record).
      const tcb* th = reinterpret_cast<const tcb*>(t.rec.tcb);
      if (th->magic != tcb::magic_value) {
        raise(errc::corrupt_image, "checkpoint %s: thread %s has no valid control block", dir.c_str(),
              thread_id::from_bits(t.rec.id).to_string().c_str());
      }
      if (th->id.bits() != t.rec.id) {
        raise(errc::corrupt_image, "checkpoint %s: the control block of thread %s names thread %s", dir.c_str(),
              thread_id::from_bits(t.rec.id).to_string().c_str(), th->id.to_string().c_str());
      }
      // What attaching it uses from the block: its stack (whose guard is installed at its base),
      // the run write_rank_file records first, and its heap (arrive() is called on it), which
      // lives in the thread's own memory. Checked here, before agree(), so that every rank refuses.
      const auto heap_at = reinterpret_cast<std::uint64_t>(th->home_heap);
      const char* why = nullptr;
      if (t.runs.empty() || reinterpret_cast<std::uint64_t>(th->stack.base) != t.runs[0].addr ||
          th->stack.bytes != t.runs[0].chunks * chunk_bytes) {
        why = "a stack that is not its first run";
      } else if (heap_at % alignof(heap) != 0 || !lies_in(t.extents, heap_at, sizeof(heap))) {
        why = "a heap outside its restored data";
      }
      if (why != nullptr) {
        raise(errc::corrupt_image, "checkpoint file %s: the control block of thread %s names %s",
              rank_file(dir, m.header.generation, t.file).c_str(), thread_id::from_bits(t.rec.id).to_string().c_str(), why);
      }
    }
  } catch (const iso::error& e) {
    problem = e.what();
    code = e.code_value();
  }
  for (int fd : fds) {
    if (fd >= 0) prim::file_close(fd);
  }
  agree(comm_, problem, code);

  // Everything verified on every rank: the threads become this run's.
  engine_.restore_id_ranks(static_cast<int>(m.header.nranks));
  for (std::size_t k = 0; k < threads.size(); ++k) {
    const restored& t = threads[k];
    const int where = static_cast<int>(k % static_cast<std::size_t>(size_));
    if (where != rank_) {
      engine_.learn_location(thread_id::from_bits(t.rec.id), where, t.rec.epoch);
      continue;
    }
    tcb* th = reinterpret_cast<tcb*>(t.rec.tcb);
    th->home_heap->arrive();  // its memory is in use on this rank now
    stack_pool::arm(th->stack);
    th->state = thread_state::ready;  // its iso::checkpoint call returns
    th->pending_dest = -1;
    th->run_cycles = 0;
    th->set_load = -1;
    sched_.attach(th);
  }
  for (const auto& [to, next] : my_sequences) engine_.restore_main_sequence(to, next);
  for (const auto& [id, joined] : finished) {
    if (engine_.home_of(thread_id::from_bits(id)) == rank_) engine_.restore_finished(thread_id::from_bits(id), joined);
  }
  sched_.raise_next_serial(m.header.max_serial + 1);
  // The restored frames hold the canary, and their jmp_bufs the pointer guard, of the job that
  // wrote the checkpoint: this job's threads run with that pair too.
  sched_.set_thread_guards(m.header.guards);
  std::uint64_t all_read = 0;
  check_mpi(MPI_Reduce(&read, &all_read, 1, MPI_UINT64_T, MPI_SUM, 0, comm_), "MPI_Reduce (restart)");
  const double seconds = static_cast<double>(now_ns() - start_ns) * 1e-9;
  if (rank_ == 0 && verbosity_ >= verbosity::steps) {
    std::printf("iso::checkpoint: restarted %zu threads from %s (generation %llu, written by %u ranks) on %d ranks: "
                "%.1f MiB in %.1f ms\n",
                threads.size(), dir.c_str(), static_cast<unsigned long long>(m.header.generation), m.header.nranks, size_,
                static_cast<double>(all_read) / (1 << 20), seconds * 1e3);
    std::fflush(stdout);
  }
}

}  // namespace iso::detail

namespace iso {

void checkpoint(const std::string& dir) {
  detail::checkpointer& c = detail::runtime_part_or_throw(detail::checkpointer::current(), "iso::checkpoint");
  detail::running_or_throw("iso::checkpoint");
  c.request(dir);
  detail::scheduler::current()->block_running(detail::wait_reason::checkpoint);
  // Resumed, perhaps in another process (a restart): c named this process's checkpointer, so look
  // it up again.
  const std::string& failure = detail::checkpointer::current()->failure();
  if (!failure.empty()) detail::raise(errc::io_failure, "iso::checkpoint(\"%s\"): %s", dir.c_str(), failure.c_str());
}

}  // namespace iso
