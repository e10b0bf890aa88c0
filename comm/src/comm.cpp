#include "comm.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>

#include "diag.hpp"

namespace iso::detail {

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
  raise(errc::mpi_failure, "%s failed: %.*s", what, len, text);
}

void describe_mpi_failure(char* buf, std::size_t cap, int rc, const char* call, int peer) noexcept {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
  if (peer >= 0) {
    safe_format(buf, cap, "%s with rank %d failed: %.*s", call, peer, len, text);
  } else {
    safe_format(buf, cap, "%s with any rank failed: %.*s", call, len, text);
  }
}

void first_failure::keep(int rc, const char* call, int peer) noexcept {
  if (text_[0] == '\0') describe_mpi_failure(text_, sizeof text_, rc, call, peer);
}

void first_failure::keep(const char* text) noexcept {
  if (text_[0] == '\0') safe_format(text_, sizeof text_, "%s", text);
}

bool first_failure::take(char* out, std::size_t cap) noexcept {
  if (text_[0] == '\0') return false;
  safe_format(out, cap, "%s", text_);
  text_[0] = '\0';
  return true;
}

void check_mpi_or_die(int rc, const char* call, int peer) noexcept {
  if (rc == MPI_SUCCESS) return;
  char text[failure_text_bytes];
  describe_mpi_failure(text, sizeof text, rc, call, peer);
  fatal("%s", text);
}

private_comm::private_comm(MPI_Comm parent) {
  check_mpi(MPI_Comm_dup(parent, &comm_), "MPI_Comm_dup");
  check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
}

private_comm::~private_comm() {
  // A destructor cannot report: a failure here only leaks the communicator, and is said so.
  int finalized = 0;
  if (MPI_Finalized(&finalized) != MPI_SUCCESS || finalized || comm_ == MPI_COMM_NULL) return;
  if (MPI_Comm_free(&comm_) != MPI_SUCCESS) std::fprintf(stderr, "isothreads: MPI_Comm_free failed\n");
}

sys_vector<unsigned char> ranks_on_this_node(MPI_Comm comm) {
  int size = 0;
  check_mpi(MPI_Comm_size(comm, &size), "MPI_Comm_size");
  MPI_Comm node = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
  MPI_Group all = MPI_GROUP_NULL, local = MPI_GROUP_NULL;
  int rc = MPI_Comm_group(comm, &all);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_group(node, &local);
  int n = 0;
  if (rc == MPI_SUCCESS) rc = MPI_Group_size(local, &n);
  sys_vector<int> in_node(static_cast<std::size_t>(n)), in_comm(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) in_node[static_cast<std::size_t>(i)] = i;
  if (rc == MPI_SUCCESS) rc = MPI_Group_translate_ranks(local, n, in_node.data(), all, in_comm.data());
  // Freed whatever happened, then the first failure reported.
  const int rc_local = local != MPI_GROUP_NULL ? MPI_Group_free(&local) : MPI_SUCCESS;
  const int rc_all = all != MPI_GROUP_NULL ? MPI_Group_free(&all) : MPI_SUCCESS;
  const int rc_node = MPI_Comm_free(&node);
  check_mpi(rc, "MPI_Comm_group/MPI_Group_translate_ranks (ranks on this node)");
  check_mpi(rc_local, "MPI_Group_free");
  check_mpi(rc_all, "MPI_Group_free");
  check_mpi(rc_node, "MPI_Comm_free");
  sys_vector<unsigned char> same(static_cast<std::size_t>(size), 0);
  for (int r : in_comm) {
    if (r >= 0 && r < size) same[static_cast<std::size_t>(r)] = 1;
  }
  return same;
}

void gather_bytes(MPI_Comm comm, const void* mine, std::size_t bytes, int root, std::size_t piece_bytes,
                  sys_vector<std::uint64_t>& counts, sys_vector<unsigned char>& flat) {
  int size = 1, rank = 0;
  check_mpi(MPI_Comm_size(comm, &size), "MPI_Comm_size");
  check_mpi(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
  // Every rank learns every count, so that all take the same path below.
  const std::uint64_t my_count = bytes;
  counts.assign(static_cast<std::size_t>(size), 0);
  check_mpi(MPI_Allgather(&my_count, 1, MPI_UINT64_T, counts.data(), 1, MPI_UINT64_T, comm), "MPI_Allgather (counts)");
  std::uint64_t total = 0;
  sys_vector<std::size_t> displs(counts.size());
  for (std::size_t r = 0; r < counts.size(); ++r) {
    displs[r] = static_cast<std::size_t>(total);
    total += counts[r];
  }
  const bool here = root < 0 || rank == root;
  flat.assign(here ? static_cast<std::size_t>(total) : 0, 0);
  const auto* src = static_cast<const unsigned char*>(mine);
  if (total <= piece_bytes && total <= static_cast<std::uint64_t>(INT32_MAX)) {
    sys_vector<int> icounts(counts.size()), idispls(counts.size());
    for (std::size_t r = 0; r < counts.size(); ++r) {
      icounts[r] = static_cast<int>(counts[r]);
      idispls[r] = static_cast<int>(displs[r]);
    }
    const int n = static_cast<int>(bytes);
    if (root < 0) {
      check_mpi(MPI_Allgatherv(src, n, MPI_BYTE, flat.data(), icounts.data(), idispls.data(), MPI_BYTE, comm),
                "MPI_Allgatherv");
    } else {
      check_mpi(MPI_Gatherv(src, n, MPI_BYTE, flat.data(), icounts.data(), idispls.data(), MPI_BYTE, root, comm),
                "MPI_Gatherv");
    }
    return;
  }
  // Too large for one collective: rank by rank, piece by piece, in the same order everywhere.
  constexpr int tag_piece = 32000;  // gather pieces on the caller's private communicator
  for (int r = 0; r < size; ++r) {
    const auto from = static_cast<std::size_t>(r);
    for (std::size_t off = 0; off < counts[from]; off += piece_bytes) {
      const int n = static_cast<int>(std::min<std::uint64_t>(piece_bytes, counts[from] - off));
      unsigned char* into = here ? flat.data() + displs[from] + off : nullptr;
      if (root < 0) {
        if (rank == r) std::memcpy(into, src + off, static_cast<std::size_t>(n));
        check_mpi(MPI_Bcast(into, n, MPI_BYTE, r, comm), "MPI_Bcast (gather piece)");
      } else if (r == root) {
        if (rank == root) std::memcpy(into, src + off, static_cast<std::size_t>(n));
      } else if (rank == r) {
        check_mpi(MPI_Send(src + off, n, MPI_BYTE, root, tag_piece, comm), "MPI_Send (gather piece)");
      } else if (rank == root) {
        check_mpi(MPI_Recv(into, n, MPI_BYTE, r, tag_piece, comm, MPI_STATUS_IGNORE), "MPI_Recv (gather piece)");
      }
    }
  }
}

}  // namespace iso::detail
