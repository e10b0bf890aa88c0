#include "layout.hpp"

#include <elf.h>
#include <link.h>
#include <sys/personality.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "checksum.hpp"
#include "diag.hpp"
#include "comm.hpp"

namespace iso::detail {
namespace {

thread_local int tls_probe = 0;

bool randomisation_enabled() {
  FILE* f = std::fopen("/proc/sys/kernel/randomize_va_space", "r");
  if (f == nullptr) return true;
  int level = 2;
  if (std::fscanf(f, "%d", &level) != 1) level = 2;
  std::fclose(f);
  return level != 0;
}

std::string build_id_of(const dl_phdr_info* info) {
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_NOTE) continue;
    const auto* p = reinterpret_cast<const unsigned char*>(info->dlpi_addr + ph.p_vaddr);
    const unsigned char* end = p + ph.p_memsz;
    while (p + sizeof(ElfW(Nhdr)) <= end) {
      const auto* note = reinterpret_cast<const ElfW(Nhdr)*>(p);
      const unsigned char* name = p + sizeof(ElfW(Nhdr));
      const unsigned char* desc = name + ((note->n_namesz + 3) & ~3u);
      if (note->n_type == NT_GNU_BUILD_ID && note->n_namesz == 4 && std::memcmp(name, "GNU", 4) == 0) {
        std::string hex;
        char byte[3];
        for (unsigned k = 0; k < note->n_descsz; ++k) {
          std::snprintf(byte, sizeof byte, "%02x", desc[k]);
          hex += byte;
        }
        return hex;
      }
      p = desc + ((note->n_descsz + 3) & ~3u);
    }
  }
  return "no-build-id";
}

int add_object(dl_phdr_info* info, std::size_t, void* out) {
  auto& lines = *static_cast<sys_vector<std::string>*>(out);
  std::string path = info->dlpi_name != nullptr ? info->dlpi_name : "";
  if (path.empty()) {
    if (!lines.empty()) return 0;  // the vDSO: not code a thread's stack can return into
    char exe[4096];
    const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
    path = n > 0 ? std::string(exe, static_cast<std::size_t>(n)) : "(executable)";
  }
  if (path.find("linux-vdso") != std::string::npos) return 0;
  lines.push_back(format("%s %#zx %s", path.c_str(), static_cast<std::size_t>(info->dlpi_addr),
                         build_id_of(info).c_str()));
  return 0;
}

}  // namespace

void ensure_fixed_layout(char** argv, bool allowed) noexcept {
  int initialized = 0;
  // Whether MPI started cannot be known if the call fails: then nothing is re-executed.
  if (MPI_Initialized(&initialized) != MPI_SUCCESS) return;
  if (!allowed || initialized || argv == nullptr) return;
  const int persona = personality(0xffffffff);
  if (persona == -1 || (persona & ADDR_NO_RANDOMIZE) != 0 || !randomisation_enabled()) return;
  if (personality(static_cast<unsigned long>(persona | ADDR_NO_RANDOMIZE)) == -1) return;
  std::fflush(nullptr);
  ::execv("/proc/self/exe", argv);
  // exec failed: carry on randomised; verify_layout will name the mismatch if one results.
  personality(static_cast<unsigned long>(persona));
}

const sys_vector<std::string>& layout_fingerprint() {
  static const sys_vector<std::string> lines = [] {
    sys_vector<std::string> out;
    dl_iterate_phdr(&add_object, &out);
    out.push_back(format("tls errno=%p probe=%p", static_cast<void*>(&errno), static_cast<void*>(&tls_probe)));
    return out;
  }();
  return lines;
}

namespace {
__attribute__((constructor)) void snapshot_layout_at_startup() { (void)layout_fingerprint(); }
}  // namespace

std::uint64_t verify_layout(MPI_Comm comm) {
  int rank = 0, size = 1;
  check_mpi(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(comm, &size), "MPI_Comm_size");
  const sys_vector<std::string>& lines = layout_fingerprint();
  std::string text;
  for (const std::string& l : lines) text += l + "\n";
  const std::uint64_t mine = checksum64(text.data(), text.size());
  sys_vector<std::uint64_t> all(static_cast<std::size_t>(size));
  check_mpi(MPI_Allgather(&mine, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, comm), "MPI_Allgather (layout)");
  bool same = true;
  for (std::uint64_t h : all) same = same && h == all[0];
  if (same) return mine;

  // They differ: every rank gets everyone's text and names the differences against rank 0's.
  const auto texts = allgather_all(comm, sys_vector<char>(text.begin(), text.end()));
  auto lines_of = [&](int r) {
    sys_vector<std::string> out;
    const std::string t(texts[static_cast<std::size_t>(r)].begin(), texts[static_cast<std::size_t>(r)].end());
    for (std::size_t at = 0; at < t.size();) {
      const std::size_t nl = t.find('\n', at);
      out.push_back(t.substr(at, nl - at));
      at = nl + 1;
    }
    return out;
  };
  const sys_vector<std::string> base = lines_of(0);
  std::string msg = "ranks differ in code layout (different binaries, library versions or load addresses; "
                    "a migrated thread's return addresses would be wrong):";
  for (int r = 1; r < size; ++r) {
    if (all[static_cast<std::size_t>(r)] == all[0]) continue;
    const sys_vector<std::string> theirs = lines_of(r);
    msg += format(" rank %d vs rank 0:", r);
    int shown = 0;
    for (std::size_t i = 0; i < std::max(base.size(), theirs.size()) && shown < 4; ++i) {
      const std::string a = i < base.size() ? base[i] : "(nothing)";
      const std::string b = i < theirs.size() ? theirs[i] : "(nothing)";
      if (a == b) continue;
      msg += format("%s [%s] vs [%s]", shown == 0 ? "" : ",", b.c_str(), a.c_str());
      ++shown;
    }
    msg += ".";
  }
  throw error(errc::layout_mismatch, msg);
}

}  // namespace iso::detail
