// Starts a runtime and reports whether the ranks' code layouts matched. Built twice, as two
// different binaries, for the MPMD test of the layout fingerprint (tests/mpi/CMakeLists.txt).
#include <cstdio>

#include "isothreads/isothreads.hpp"

#ifndef PROBE_VARIANT
#error "PROBE_VARIANT must name the variant"
#endif

int main(int argc, char** argv) {
  try {
    iso::runtime rt(argc, argv);
    std::printf("LAYOUT_OK rank %d variant %s\n", rt.rank(), PROBE_VARIANT);
    return 0;
  } catch (const iso::error& e) {
    std::printf("%s rank ? variant %s: %s\n", e.code_value() == iso::errc::layout_mismatch ? "LAYOUT_MISMATCH" : "OTHER_ERROR",
                PROBE_VARIANT, e.what());
    return 3;
  }
}
