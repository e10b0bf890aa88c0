#include "scheduler.hpp"

#include <cxxabi.h>
#include <signal.h>
#include <time.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <exception>

#include "context.hpp"
#include "diag.hpp"
#include "interpose.hpp"
#include "prim.hpp"
#include "region.hpp"
#include "stack.hpp"

namespace iso::detail {
namespace {

// See on_scheduler_thread(). Initial-exec TLS, so a signal handler may read it.
constinit thread_local bool tl_scheduler_thread __attribute__((tls_model("initial-exec"))) = false;

}  // namespace

bool on_scheduler_thread() noexcept { return tl_scheduler_thread; }

namespace {

std::size_t describe_running(char* buf, std::size_t cap) noexcept {
  scheduler* s = scheduler::current();
  tcb* t = s != nullptr && on_scheduler_thread() ? s->running() : nullptr;
  if (t == nullptr) return 0;
  return safe_format(buf, cap, "thread %d:%" PRIu64 " '%s'", t->id.home(), t->id.serial(), t->name);
}

// The handlers that were installed before ours (Open MPI's, a sanitizer's, the program's, or the
// default action), by signal: faults that are not a migratable thread's go to them.
struct sigaction g_previous_segv {}, g_previous_bus {};

// The default action for sig from now on (async-signal-safe).
void reset_to_default(int sig) noexcept {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
}

// SIGSEGV/SIGBUS on the alternate stack: a fault inside the running thread's guard is a stack
// overflow; any other fault inside a thread is reported with the thread's name. A fault outside
// threads (main, the scheduler, another OS thread) is handed to the handler ours replaced, as if
// ours were not there: called with the same arguments, or, for the default action or an ignored
// fault, by reinstating it, so that returning re-executes the access under it.
void on_fault(int sig, siginfo_t* info, void* uctx) {
  scheduler* s = scheduler::current();
  tcb* t = s != nullptr && on_scheduler_thread() ? s->running() : nullptr;
  if (t != nullptr && t->stack.guard_contains(info->si_addr)) {
    fatal("thread %d:%" PRIu64 " '%s' overflowed its %zu KiB stack on rank %d", t->id.home(),
          t->id.serial(), t->name, t->stack.bytes >> 10, s->rank());
  }
  if (t != nullptr) fatal("%s at address %p", sig == SIGBUS ? "bus error" : "segmentation fault", info->si_addr);
  const struct sigaction& previous = sig == SIGBUS ? g_previous_bus : g_previous_segv;
  // SIG_DFL and SIG_IGN are handler values whatever the flags say (the two pointers share a
  // union). An ignored fault would only repeat: it gets the default action too.
  if (previous.sa_handler == SIG_DFL || previous.sa_handler == SIG_IGN) {
    reset_to_default(sig);
    return;
  }
  // What the kernel would have done delivering to it: reset a one-shot handler, block its mask
  // (and the signal itself unless SA_NODEFER) while it runs.
  if ((previous.sa_flags & SA_RESETHAND) != 0) reset_to_default(sig);
  sigset_t mask = previous.sa_mask, saved;
  pthread_sigmask(SIG_BLOCK, &mask, &saved);
  if ((previous.sa_flags & SA_NODEFER) != 0) {
    sigemptyset(&mask);
    sigaddset(&mask, sig);
    pthread_sigmask(SIG_UNBLOCK, &mask, nullptr);
  }
  if ((previous.sa_flags & SA_SIGINFO) != 0) {
    previous.sa_sigaction(sig, info, uctx);
  } else {
    previous.sa_handler(sig);
  }
  pthread_sigmask(SIG_SETMASK, &saved, nullptr);
}

void* enter_exception_heap(bool own) noexcept {
  void* saved = current_heap;
  scheduler* s = scheduler::current();
  tcb* t = s != nullptr && on_scheduler_thread() ? s->running() : nullptr;
  current_heap = own && t != nullptr ? t->home_heap : nullptr;
  return saved;
}

void leave_exception_heap(void* saved) noexcept { current_heap = static_cast<heap*>(saved); }

// Once per process, on the scheduler's OS thread; on failure nothing stays installed and a later
// scheduler tries again.
void install_fault_handlers() {
  static bool installed = false;
  if (installed) return;
  // The handler must run on its own stack: an overflowing thread has none left.
  constexpr std::size_t altstack_bytes = 64 << 10;
  stack_t ss{};
  ss.ss_sp = __libc_malloc(altstack_bytes);
  ss.ss_size = altstack_bytes;
  if (ss.ss_sp == nullptr) raise(errc::system_failure, "no memory for the signal stack of the stack-overflow handler");
  // Takes back what was installed so far, then raises naming the call that failed.
  const auto fail = [&ss](const char* call, bool altstack_set, bool segv_set) {
    const int e = errno;
    if (segv_set) sigaction(SIGSEGV, &g_previous_segv, nullptr);
    if (altstack_set) {
      stack_t off{};
      off.ss_flags = SS_DISABLE;
      sigaltstack(&off, nullptr);
    }
    __libc_free(ss.ss_sp);
    raise(errc::system_failure, "cannot install the stack-overflow handler: %s: %s", call, std::strerror(e));
  };
  if (sigaltstack(&ss, nullptr) != 0) fail("sigaltstack", false, false);
  struct sigaction sa {};
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSEGV, &sa, &g_previous_segv) != 0) fail("sigaction(SIGSEGV)", true, false);
  if (sigaction(SIGBUS, &sa, &g_previous_bus) != 0) fail("sigaction(SIGBUS)", true, true);
  installed = true;
}

}  // namespace

void raise_no_runtime(const char* call) {
  raise(errc::no_runtime, "%s: no isothreads runtime in this process (create iso::runtime first)", call);
}

tcb* running_or_throw(const char* call) {
  tcb* t = scheduler_or_throw(call).running();
  if (t == nullptr) raise(errc::not_in_thread, "%s must be called from a migratable thread", call);
  return t;
}

std::int64_t now_ns() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// ---- local progress ----

void local_progress::idle(scheduler&, std::int64_t max_ns) noexcept {
  if (max_ns <= 0) return;
  const timespec ts{static_cast<time_t>(max_ns / 1'000'000'000), static_cast<long>(max_ns % 1'000'000'000)};
  nanosleep(&ts, nullptr);
}

bool local_progress::finished(scheduler& s) {
  if (s.live_threads() == 0) return true;
  if (s.sleeping_threads() == 0 && !s.policy().has_ready_threads()) {
    raise(errc::deadlock, "deadlock on rank %d: %zu threads are blocked and nothing can wake them",
          s.rank(), s.live_threads());
  }
  return false;
}

// ---- scheduler ----

scheduler::scheduler(int rank, sched_policy* policy, progress_engine* progress)
    : rank_(rank),
      policy_(policy != nullptr ? policy : &default_policy_),
      progress_(progress != nullptr ? progress : &default_progress_) {
  if (scheduler::current_ != nullptr) raise(errc::invalid_argument, "a scheduler already exists in this process");
  region::get().init_single_rank();  // no-op once the runtime agreed the region across ranks
  set_diag_rank(rank);
  install_fault_handlers();
  tl_scheduler_thread = true;
  // Threads switch only on this OS thread (the runtime's), so its exception state is the one
  // every switch keeps per context (switch.hpp).
  eh_here = reinterpret_cast<eh_state*>(abi::__cxa_get_globals());
  set_context_hook(&describe_running);
  set_exception_heap_hooks({&enter_exception_heap, &leave_exception_heap});
  process_guards = read_tls_guards();
  thread_guards_ = process_guards;
  scheduler::current_ = this;
}

scheduler::~scheduler() {
  // A saved scheduler context exists only while a thread runs; destroying it would unwind main.
  ISO_ASSERT_INTERNAL(!sched_ctx_);
  scheduler::current_ = nullptr;
  tl_scheduler_thread = false;
  set_context_hook(nullptr);
  set_exception_heap_hooks({nullptr, nullptr});
}

tcb* scheduler::create_thread(const spawn_options& opts) {
  if (opts.stack_bytes < min_stack_bytes || opts.stack_bytes > max_stack_bytes) {
    raise(errc::stack_size, "iso::spawn: stack_bytes = %zu is outside [%zu, %zu] (64 KiB to 1 GiB)",
          opts.stack_bytes, min_stack_bytes, max_stack_bytes);
  }
  heap_scope system(nullptr);
  const std::size_t stack_bytes = (opts.stack_bytes + chunk_bytes - 1) / chunk_bytes * chunk_bytes;
  stack_pool& pool = stack_pool::get();
  // The TCB sits in the heap's reserved bytes, in the page the heap's header is on: no block to
  // allocate, and a thread whose body's size class fits beside it touches one heap page.
  static_assert(sizeof(tcb) <= heap::max_reserve_bytes && alignof(tcb) <= 16);
  void* warm = pool.acquire_heap_chunk();
  heap* h = warm != nullptr ? heap::create(warm, sizeof(tcb))
                            : pool.or_flush_and_retry([] { return heap::create(nullptr, sizeof(tcb)); });
  stack_run stack;
  try {
    stack = pool.acquire(stack_bytes);
  } catch (...) {
    release_heap(h);
    throw;
  }
  // Default-initialised, not value-initialised: every field has its initialiser (tcb.hpp), and the
  // inline body's bytes (written by the spawn that follows, if used) are not zeroed first.
#if ISO_DEBUG_LEVEL >= 2
  std::memset(h->reserved(), 0xD5, sizeof(tcb));  // a field left without an initialiser shows
#endif
  tcb* t = new (h->reserved()) tcb;
  t->id = thread_id(rank_, next_serial_++);
  t->home_heap = h;
  t->suspended_heap = h;
  t->stack = stack;
  opts.name.copy(t->name, sizeof t->name - 1);  // the rest of name is zero already (no padding to write)
  t->stealable = opts.stealable;
  return t;
}

void scheduler::start_thread(tcb* t) noexcept {
  try {
    table_.insert(t->id.bits(), t);
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while registering thread %d:%" PRIu64, t->id.home(), t->id.serial());
  }
  t->state = thread_state::ready;
  if (policy_ != &default_policy_) {
    if (running_ != nullptr) policy_->forked(t); else policy_->awakened(t);
  } else if (running_ != nullptr) {
    default_policy_.forked(t);  // called directly, as on every switch (ready_deque is final)
  } else {
    default_policy_.awakened(t);
  }
  // Last: nothing runs t before its spawner suspends (context_create only lays out its first
  // frame, with no switch).
  context_create(t);
}

void scheduler::discard_thread(tcb* t) noexcept {
  stack_pool::get().release(t->stack);
  release_heap(t->home_heap);
}

void scheduler::release_heap(heap* h) noexcept { stack_pool::get().release_heap_chunk(h->retire()); }

bool scheduler::take_finished(thread_id id) noexcept { return finished_.erase(id.bits()); }

void scheduler::resume(tcb* t) noexcept {
  start_running(t);
  if (run_hook_ != nullptr) trace_start_ns_ = now_ns();
  if (measure_) run_start_ = prim::cycles();
  write_tls_guards(thread_guards_);
  context_switch(t->self_ctx(), &sched_ctx_);
  write_tls_guards(process_guards);
  // Back in the scheduler from `back`: t itself, or a thread t yielded to directly (TCBs stay here
  // until teardown or departure, so `back` is valid); its context has landed in its TCB.
  tcb* back = running_;
  current_heap = nullptr;
  if (back == nullptr) return;  // it ended, accounted and torn down on its own stack (finish_running)
  if (measure_ || run_hook_ != nullptr) account_switch(back);
  running_ = nullptr;
  // A thread due to leave is queued like any other first: detach() takes it out of whatever
  // queue its state puts it in.
  if (back->state == thread_state::ready) {
    if (policy_ == &default_policy_) default_policy_.awakened(back); else policy_->awakened(back);
  }
  if (back->pending_dest >= 0 && depart_hook_ != nullptr && movable(back)) depart_hook_(*this, back);
}

void scheduler::account_switch(tcb* self) noexcept {
  if (measure_) close_window(self);
  if (run_hook_ != nullptr) trace_run(self);
}

void scheduler::trace_run(tcb* self) noexcept {
  const std::int64_t now = now_ns();
  heap_scope system(nullptr);  // on a direct switch self's heap is current: hooks get the system heap
  run_hook_(self, trace_start_ns_, now);
  trace_start_ns_ = now;
}

void scheduler::close_window(tcb* self) noexcept {
  const std::uint64_t now = prim::cycles();
  if (self != nullptr && self->run_estimate == 0 && ended_unmeasured_ != 0) {
    // Self's first run started after an ended run never measured alone in this window, so by a
    // direct switch that noted its start (open_run: the scheduler's context holds no open window,
    // and no run ends while self runs): the window ends there, and self's run is measured alone.
    credit_window(nullptr, first_run_start_ - run_start_);
    credit_window(self, now - first_run_start_);
  } else {
    credit_window(self, now - run_start_);
  }
  run_start_ = now;
}

void scheduler::end_in_window(tcb* t) noexcept {
  if (t->window_runs != 0) {  // deferred runs: short estimates (defer_measure)
    ended_weight_ += t->run_estimate * t->window_runs;
    tcb** const end = window_ + window_threads_;
    *std::find(window_, end, t) = *(end - 1);
    --window_threads_;
    t->window_runs = 0;
  }
  ++window_runs_;
  if (t->run_estimate != 0) ended_weight_ += t->run_estimate; else ++ended_unmeasured_;
}

__extension__ using uint128 = unsigned __int128;  // GCC and Clang: a 64x64 product's high half

void scheduler::credit_window(tcb* self, std::uint64_t cycles) noexcept {
  if (window_runs_ == 0) {
    ISO_ASSERT_INTERNAL(self != nullptr);  // a window closed without self holds an ended run
    self->run_cycles += cycles;
    self->run_estimate = cycles;
    window_rng_ ^= window_rng_ << 13;
    window_rng_ ^= window_rng_ >> 17;
    window_rng_ ^= window_rng_ << 5;
    window_len_ = cycles >= long_run_cycles_ ? 0 : min_window + window_rng_ % min_window;
    return;
  }
  if (self != nullptr && self->window_runs++ == 0) window_[window_threads_++] = self;
  const std::uint32_t n = window_threads_;
  const bool ended_runs = ended_weight_ + ended_unmeasured_ != 0;
  ISO_ASSERT_INTERNAL(n > 0 || ended_runs);
  // A window a thread's end closes (self null) leaves the next window the rest of its length (see
  // window_); any other, none.
  const std::uint32_t len_left = self == nullptr && window_len_ > window_runs_ ? window_len_ - window_runs_ : 0;
  if (n == 0) {
    // Only ended runs: the whole interval is theirs, credited to no thread (as the sharing below
    // would, without its divisions: a child that ends in its first run closes such a window at
    // every spawn and join).
    clear_window();
    window_len_ = len_left;
    return;
  }
  // Weights: a thread's estimate (short for the deferred runs, see defer_measure; self's may be
  // long), or for self never measured alone the window's mean run, times its runs in the window;
  // the ended runs' the same way (defer_end, end_in_window), but those never measured alone,
  // which take what the others' weights leave of `cycles` (see window_). Every thread in the window
  // but self has an estimate (defer_measure). In fixed point with 20 fraction bits, so that
  // sharing out costs a multiplication a thread. Self is never one never measured alone in a
  // window with ended runs never measured alone (close_window measures its run apart).
  ISO_ASSERT_INTERNAL(self == nullptr || self->run_estimate != 0 || ended_unmeasured_ == 0);
  const std::uint64_t mean = self != nullptr && self->run_estimate == 0 ? cycles / (window_runs_ + 1) + 1 : 0;
  const auto weight = [mean](const tcb* t) { return (t->run_estimate != 0 ? t->run_estimate : mean) * t->window_runs; };
  std::uint64_t known = ended_weight_;
  for (std::uint32_t i = 0; i < n; ++i) known += weight(window_[i]);
  // Each its weight exactly, the rest the unmeasured runs' (the common case of a joiner of
  // children that end in their first run: no multiplication), or the weights scaled to `cycles`.
  const bool exact = ended_unmeasured_ != 0 && known <= cycles;
  const auto scale =
      exact ? 0 : static_cast<std::uint64_t>(static_cast<double>(cycles) * 0x1p20 / static_cast<double>(known));
  std::uint64_t given = 0;
  for (std::uint32_t i = 0; i < n; ++i) {
    // Without ended runs the first gets the rest, so that the credits sum to `cycles`; with them
    // the rest is theirs, credited to no thread (the rank's background, as is all the time of
    // threads that are gone).
    const std::uint64_t w = weight(window_[i]);
    const auto c = i == 0 && !ended_runs ? 0
                   : exact               ? w
                                         : static_cast<std::uint64_t>((static_cast<uint128>(w) * scale) >> 20);
    window_[i]->run_cycles += c;
    window_[i]->window_runs = 0;
    given += c;
  }
  if (!ended_runs) window_[0]->run_cycles += given < cycles ? cycles - given : 0;
  clear_window();
  window_len_ = len_left;
}

void scheduler::teardown(tcb* t) noexcept {
  table_.erase(t->id.bits());
  if (finish_hook_ != nullptr) {
    finish_hook_(*this, t);
  } else if (t->joiner) {
    tcb* j = find(t->joiner);
    ISO_ASSERT_INTERNAL(j != nullptr && j->wait == wait_reason::join && j->waiting_for == t->id);
    j->join_status = errc::ok;
    j->waiting_for = thread_id{};
    wake(j, true);
  } else {
    try {
      finished_.insert(t->id.bits(), {});  // once: a thread finishes once
    } catch (const std::bad_alloc&) {
      fatal("out of system memory while recording that thread %d:%" PRIu64 " finished", t->id.home(), t->id.serial());
    }
  }
  // The stack goes back to the pool after the switch away from it (context.cpp); the TCB lives
  // in the heap, so the heap goes last.
  t->magic = 0;
  release_heap(t->home_heap);
}

boost::context::fiber& scheduler::finish_running(tcb* t) noexcept {
  // The switch away from a thread that ends is thread_entry's jump or ontop (context.cpp), not
  // context_resume_named: it keeps no exception state, so none may be left here (thread_main
  // catches everything, and the body's destructor runs outside any handler).
  ISO_ASSERT_INTERNAL(eh_here->caught == nullptr && eh_here->uncaught == 0);
  // A mutex still held would stay owned by this control block's address, which the next spawn
  // may get: that thread would then hold it, and the mutex's waiters would wait forever.
  if (t->locks_held != 0) {
    fatal("thread %d:%" PRIu64 " '%s' ended holding %u iso::mutex lock(s) on rank %d", t->id.home(), t->id.serial(),
          t->name, t->locks_held, rank_);
  }
  t->state = thread_state::finished;
  current_heap = nullptr;  // what the teardown allocates is the system's
  // Its run ends here: into the open window as an ended run, when it can stay open (defer_end),
  // else too but with the window closed by a clock read after the teardown (end_in_window), so
  // that no window holds a thread that is gone (see window_) and the teardown counts as t's
  // time, not as the run of the thread that runs next (tracing shows it between the two).
  const bool deferred = run_hook_ == nullptr && measure_ && defer_end(t);
  if (!deferred) {
    if (measure_) end_in_window(t);
    if (run_hook_ != nullptr) trace_run(t);
  }
  running_ = nullptr;
  teardown(t);  // the joiner, when on this rank, is ready now (fork-join: at the head)
  if (!deferred) {
    if (measure_) close_window(nullptr);
    if (run_hook_ != nullptr) trace_start_ns_ = now_ns();
  }
  switch_landing = &ended_landing_;
  if (tcb* next = direct_next()) {
    open_run(next);
    start_running(next);
    return next->self_ctx();
  }
  // The scheduler's context holds no open window (detach, which may run there, relies on it).
  if (deferred) close_window(nullptr);
  return sched_ctx_;
}

bool scheduler::movable(const tcb* t) noexcept {
  if (t->locks_held != 0) return false;
  switch (t->state) {
    case thread_state::ready:
    case thread_state::sleeping: return true;
    case thread_state::blocked:
      return t->wait == wait_reason::join || t->wait == wait_reason::recv || t->wait == wait_reason::sync;
    case thread_state::running:
    case thread_state::finished: return false;
  }
  return false;
}

tcb* scheduler::oldest_stealable() const noexcept {
  return policy_->oldest_ready(
      [](const tcb* c, const void*) noexcept { return c->stealable && c->pending_dest < 0 && movable(c); }, nullptr);
}

void scheduler::detach(tcb* t) noexcept {
  ISO_ASSERT_INTERNAL(movable(t));
  // A thread in the open window (it suspended by a direct switch and is moved by the running
  // thread, iso::migrate) has its share credited now: nothing here writes its TCB once it left.
  if (t->window_runs != 0) {
    ISO_ASSERT_INTERNAL(running_ != nullptr);
    close_window(running_);
  }
  if (t->state == thread_state::ready) {
    policy_->remove(t);
  } else if (t->state == thread_state::sleeping) {
    remove_timer(t);
    t->sleep_left_ns = std::max<std::int64_t>(t->wake_ns - now_ns(), 0);
  } else if (t->state == thread_state::blocked) {
    --blocked_[static_cast<std::size_t>(t->wait)];
  }
  t->next = t->prev = nullptr;
  table_.erase(t->id.bits());
}

void scheduler::attach(tcb* t) noexcept {
  t->next = t->prev = nullptr;
  t->window_runs = 0;  // an arriving thread is in none of this rank's windows
  try {
    table_.insert(t->id.bits(), t);
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while registering thread %d:%" PRIu64, t->id.home(), t->id.serial());
  }
  if (t->state == thread_state::ready) {
    policy_->awakened(t);
  } else if (t->state == thread_state::sleeping) {
    t->wake_ns = now_ns() + t->sleep_left_ns;
    insert_timer(t);
  } else if (t->state == thread_state::blocked) {
    ++blocked_[static_cast<std::size_t>(t->wait)];
  }
}

void scheduler::insert_timer(tcb* t) noexcept {
  // From the tail: sleeps mostly end in the order they start.
  tcb* after = timers_.tail;
  while (after != nullptr && after->wake_ns > t->wake_ns) after = after->prev;
  t->prev = after;
  t->next = after != nullptr ? after->next : timers_.head;
  if (t->next != nullptr) t->next->prev = t; else timers_.tail = t;
  if (after != nullptr) after->next = t; else timers_.head = t;
  ++sleepers_;
}

void scheduler::remove_timer(tcb* t) noexcept {
  wait_remove(timers_, t);
  --sleepers_;
}

void scheduler::wake(tcb* t, bool fork_join) noexcept {
  ISO_ASSERT_INTERNAL(t->state == thread_state::blocked);
  --blocked_[static_cast<std::size_t>(t->wait)];
  t->state = thread_state::ready;
  if (fork_join) policy_->forked(t); else policy_->awakened(t);
}

void scheduler::wake_sleeper(tcb* t) noexcept {
  ISO_ASSERT_INTERNAL(t->state == thread_state::sleeping);
  remove_timer(t);
  t->state = thread_state::ready;
  policy_->awakened(t);
}

void scheduler::wake_all(wait_reason why) noexcept {
  // wake() touches only blocked_ and the ready queue, never table_, so iterating table_ while
  // waking is safe. A woken thread keeps t->wait until it runs, hence the state test.
  table_.for_each([this, why](tcb* t) {
    if (t->state == thread_state::blocked && t->wait == why) wake(t);
  });
}

void scheduler::wake_expired(std::int64_t now) noexcept {
  while (!timers_.empty() && timers_.head->wake_ns <= now) {
    tcb* t = wait_pop(timers_);
    --sleepers_;
    t->state = thread_state::ready;
    policy_->awakened(t);
  }
}

namespace {

// prim::cycles() per ns, measured once over about 100 us against the monotonic clock (the
// time-stamp counter runs at a fixed rate; elsewhere cycles() is in ns already).
double cycles_per_ns() noexcept {
  static const double rate = [] {
    const std::int64_t t0 = now_ns();
    const std::uint64_t c0 = prim::cycles();
    std::int64_t t1 = t0;
    while (t1 - t0 < 100'000) t1 = now_ns();
    return static_cast<double>(prim::cycles() - c0) / static_cast<double>(t1 - t0);
  }();
  return rate;
}

}  // namespace

void scheduler::set_measure_load(bool on) noexcept {
  // Turned on by a running thread, its run counts from now (resume() starts the others' runs): it
  // stayed stale while off, and when turned on again the window it would close is dropped below.
  if (on) run_start_ = prim::cycles();
  measure_ = on;
  // The open window's runs are not credited (its threads are live: see window_).
  for (std::uint32_t i = 0; i < window_threads_; ++i) window_[i]->window_runs = 0;
  clear_window();
  if (on && long_run_cycles_ == 0) {
    const double rate = cycles_per_ns();
    long_run_cycles_ = static_cast<std::uint64_t>(2000 * rate);
    ns_per_cycle_ = 1 / rate;
    idle_lost_core_cycles_ = static_cast<std::uint64_t>(static_cast<double>(idle_lost_core_ns) * rate);
    idle_read_every_cycles_ = static_cast<std::uint64_t>(static_cast<double>(idle_read_every_ns) * rate);
  }
  idle_open_ = false;  // a stretch opens at the next pass that finds nothing, measured from there
}

void scheduler::set_poll_interval_ns(std::int64_t ns) noexcept {
  poll_interval_cycles_ = ns > 0 ? std::max<std::uint64_t>(static_cast<std::uint64_t>(static_cast<double>(ns) * cycles_per_ns()), 1) : 0;
  last_poll_cycles_ = prim::cycles();
}

void scheduler::run() {
  if (running_ != nullptr) raise(errc::invalid_argument, "run() called from a migratable thread");
  idle_open_ = false;  // a run() that left by an exception may have left a stretch open
  for (;;) {
    if (!timers_.empty()) wake_expired(now_ns());
    if (tcb* t = policy_ == &default_policy_ ? default_policy_.pick_next() : policy_->pick_next()) {
      // A thread about to run ends the idle stretch, whatever made it ready (a timer, a message
      // taken in the idle wait): else the next idle pass would credit its run as idle time.
      idle_open_ = false;
      resume(t);
      if (++since_poll_ >= switches_per_poll_ || poll_due_by_time()) {
        since_poll_ = 0;
        if (poll_interval_cycles_ != 0) last_poll_cycles_ = prim::cycles();
        switches_per_poll_ = progress_->poll(*this) ? min_switches_per_poll
                                                    : std::min(2 * switches_per_poll_, max_switches_per_poll);
      }
      continue;
    }
    since_poll_ = 0;
    switches_per_poll_ = min_switches_per_poll;
    // Passes that find nothing to do are idle time (see idle_open_): a pass that does work for
    // threads outside them (messages, migrations) ends the idle stretch, and that work is the
    // rank's background for the load balancer.
    if (progress_->poll(*this) || policy_->has_ready_threads() ||
        (!timers_.empty() && timers_.head->wake_ns <= now_ns())) {
      idle_open_ = false;
      continue;
    }
    if (measure_ && !idle_open_) open_idle_stretch();
    if (progress_->finished(*this)) {
      idle_open_ = false;
      return;
    }
    if (policy_->has_ready_threads()) {  // finished() may have run a balancing step
      idle_open_ = false;
      continue;
    }
    stack_pool::get().trim();  // off the hot path: nothing is ready, the rank is about to wait
    const std::int64_t deadline = next_deadline();
    progress_->idle(*this, deadline < 0 ? -1 : std::max<std::int64_t>(deadline - now_ns(), 0));
    if (idle_open_) credit_idle_pass();
  }
}

void scheduler::open_idle_stretch() noexcept {
  idle_open_ = true;
  idle_mark_ = idle_read_cycles_ = prim::cycles();
  idle_cpu_read_ = prim::thread_cpu_ns();
  idle_cpu_at_read_ = idle_cpu_ns_;
}

void scheduler::credit_idle_pass() noexcept {
  const std::uint64_t now = prim::cycles();
  const std::uint64_t pass = now - idle_mark_;
  idle_cycles_ += pass;
  idle_mark_ = now;
  if (pass < idle_lost_core_cycles_ && now - idle_read_cycles_ < idle_read_every_cycles_) {
    idle_cpu_ns_ += static_cast<std::int64_t>(static_cast<double>(pass) * ns_per_cycle_);  // its wall time
    return;
  }
  // Every pass since the last read, estimated or not, gets its exact CPU time.
  const std::int64_t cpu = prim::thread_cpu_ns();
  idle_cpu_ns_ = idle_cpu_at_read_ + (cpu - idle_cpu_read_);
  idle_cpu_at_read_ = idle_cpu_ns_;
  idle_cpu_read_ = cpu;
  idle_read_cycles_ = now;
}

void scheduler::sleep_running_until(std::int64_t deadline) {
  tcb* self = running_;
  if (self == nullptr) raise(errc::not_in_thread, "iso::this_thread::sleep_for called outside a migratable thread");
  self->wake_ns = deadline;
  insert_timer(self);
  self->state = thread_state::sleeping;
  switch_out(self);
}

void scheduler::block_running(wait_reason why) noexcept {
  tcb* self = running_;
  context_resume_named(prepare_block(why));
  self->wait = wait_reason::none;
}

boost::context::fiber& scheduler::prepare_block(wait_reason why) noexcept {
  tcb* self = running_;
  self->state = thread_state::blocked;
  self->wait = why;
  ++blocked_[static_cast<std::size_t>(why)];
  self->suspended_heap = current_heap;
  switch_landing = &self->self_ctx();
  // Straight to the next ready thread when it can run without the scheduler (a join of a thread
  // just spawned: to that thread).
  return next_context(self, false);
}

boost::context::fiber& thread_main(tcb* t, stack_run* stack) noexcept {
  t->started = true;
  try {
    t->body->run();
  } catch (const std::exception& e) {
    fatal("thread %d:%" PRIu64 " '%s' ended with an uncaught exception: %s", t->id.home(),
          t->id.serial(), t->name, e.what());
  } catch (...) {
    fatal("thread %d:%" PRIu64 " '%s' ended with an uncaught exception", t->id.home(), t->id.serial(), t->name);
  }
  // Its heap is current: what the callable owns, and the callable unless it is inline, go back to it.
  if (static_cast<void*>(t->body) == t->inline_body) {
    t->body->~body_base();
  } else {
    delete t->body;
  }
  t->body = nullptr;
  // The context finish_running gives frees the stack there (context.cpp); what lands is an empty
  // context. The scheduler afresh: t may have migrated (its stack run is the same on every rank).
  *stack = t->stack;
  return scheduler::current()->finish_running(t);
}

}  // namespace iso::detail
