// A library that test_guards opens and closes from inside a thread: its static object's destructor
// runs at dlclose, through __cxa_finalize.
namespace {
int* g_watched = nullptr;
struct witness {
  ~witness() {
    if (g_watched != nullptr) ++*g_watched;
  }
} g_witness;
}  // namespace

extern "C" void iso_test_dso_watch(int* counter) { g_watched = counter; }
