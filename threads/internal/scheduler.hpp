// The per-rank scheduler: runs every migratable thread of this rank on one OS thread.
//
// Parts (Boost.Fiber / folly::fibers style):
//   sched_policy     which ready thread runs next (ready_deque by default); intrusive, never
//                    allocates.
//   progress_engine  everything that is not scheduling: polling MPI, backing off when idle,
//                    deciding when run() may return. Unit tests use local_progress (no MPI).
//   scheduler        the run loop, timers, the table of live threads, thread creation/teardown.
// A thread switches to the scheduler and back (two context switches), or, yielding, blocking or
// ending with nothing for the scheduler to do, straight to the next ready thread (one). Switches
// follow the landing protocol of isothreads/detail/switch.hpp.
#pragma once

#include <cstddef>
#include <cstdint>

#include "context.hpp"
#include "guards.hpp"
#include "interpose.hpp"
#include "prim.hpp"
#include "sysalloc.hpp"
#include "tcb.hpp"
#include "thread_table.hpp"

namespace iso::detail {

class scheduler;

// Steady clock in ns.
std::int64_t now_ns() noexcept;

// True on the OS thread that runs the scheduler: the only one on which scheduler::running() is
// the code executing (other OS threads, MPI's or the program's, never run migratable threads).
// Async-signal-safe.
bool on_scheduler_thread() noexcept;

class sched_policy {
 public:
  virtual ~sched_policy() = default;
  virtual void awakened(tcb* t) noexcept = 0;       // t became ready; pre: t in no queue
  // t became ready as fork-join work: spawned by a running thread, or a joiner whose child just
  // ended (its continuation). pre: t in no queue. A policy without the distinction: awakened().
  virtual void forked(tcb* t) noexcept { awakened(t); }
  virtual tcb* pick_next() noexcept = 0;            // the next thread to run, removed; or null
  virtual bool has_ready_threads() const noexcept = 0;
  virtual void remove(tcb* t) noexcept = 0;         // takes t out of the ready set; pre: t is in it
  // What a thief takes (work stealing), among the ready threads for which fits(t, context) holds
  // (the policy may look at only some, those ready longest): the one spawned first (the lowest
  // serial number of its id: spawn order on its home rank, no clock read at a spawn) of those
  // that have not started, else the one ready longest; left in the ready set; or null, also when
  // it is the only ready thread (a victim keeps work for itself). In fork-join the oldest
  // unstarted thread is nearest the root and holds the biggest share of the work, while a started
  // one is most often a parent woken to finish (its children done). A policy that cannot tell
  // gives none away.
  using ready_filter = bool (*)(const tcb* t, const void* context) noexcept;
  virtual tcb* oldest_ready(ready_filter fits, const void* context) const noexcept {
    (void)fits;
    (void)context;
    return nullptr;
  }
};

// The default ready set: ONE list through tcb::next/prev, in two parts,
//   head -> [fork-join part: newest ... oldest] [FIFO part: oldest ... newest] <- tail
// with fifo_ pointing at the FIFO part's first thread (null when that part is empty).
//   forked(t)    a thread spawned by a running thread, or a joiner whose child just ended, goes to
//                the head: this rank works the fork-join part LIFO, as a Cilk worker works its
//                own deque (the spawner itself runs on until it suspends: help-first, no switch
//                at a spawn), so a fork-join program runs depth-first and keeps about
//                depth x pending-children threads alive (docs/user-guide.md) instead of spreading
//                breadth-first.
//   awakened(t)  everything else (a yield, a wake by a message, a lock or a timer, an arrival, a
//                spawn from main) goes to the tail: FIFO, fair among them.
//   pick_next()  takes the head, except that every fifo_turn-th pick while the FIFO part is not
//                empty takes its first thread: fork-join work cannot starve the FIFO part.
// For work stealing (thieves take the OLDEST ready thread that satisfies a predicate, Cilk's
// thieves the oldest continuation): both parts' oldest ends are O(1), the fork-join part's at
// fifo_->prev (tail when the FIFO part is empty), scanned toward the head, and the FIFO part's at
// fifo_, scanned toward the tail; remove(t) keeps fifo_ right from anywhere, so a thief only
// has to call remove() on what it takes. Final and inline: the scheduler calls it directly when
// it is the policy in use, on every switch.
class ready_deque final : public sched_policy {
 public:
  void awakened(tcb* t) noexcept override {
    wait_push(ready_, t);
    if (fifo_ == nullptr) fifo_ = t;
  }
  void forked(tcb* t) noexcept override { wait_push_front(ready_, t); }
  tcb* pick_next() noexcept override {
    if (ready_.empty()) return nullptr;
    tcb* t = fifo_ != nullptr && ++picks_ % fifo_turn == 0 ? fifo_ : ready_.head;
    remove(t);
    return t;
  }
  bool has_ready_threads() const noexcept override { return !ready_.empty(); }
  void remove(tcb* t) noexcept override {
    if (t == fifo_) fifo_ = t->next;
    wait_remove(ready_, t);
  }
  // A thief's choice is searched among the steal_scan oldest threads of each part (a fork-join
  // set can hold 10^5 threads, each TCB in its own pages, a cache miss apiece: a victim answers a
  // request in a bounded time): the fork-join part from its oldest end toward the head, the FIFO
  // part from fifo_ toward the tail.
  static constexpr int steal_scan = 32;
  tcb* oldest_ready(ready_filter fits, const void* context) const noexcept override {
    if (ready_.head == ready_.tail) return nullptr;  // none, or one: it stays
    tcb* fresh = nullptr;    // the oldest unstarted one
    tcb* waiting = nullptr;  // the first started one
    const auto consider = [&](tcb* t) {
      if (t->started ? waiting == nullptr : fresh == nullptr || t->id.serial() < fresh->id.serial()) {
        if (fits(t, context)) (t->started ? waiting : fresh) = t;
      }
    };
    int seen = 0;
    for (tcb* t = fifo_ != nullptr ? fifo_->prev : ready_.tail; t != nullptr && seen < steal_scan; t = t->prev, ++seen) {
      consider(t);
    }
    seen = 0;
    for (tcb* t = fifo_; t != nullptr && seen < steal_scan; t = t->next, ++seen) consider(t);
    return fresh != nullptr ? fresh : waiting;
  }

 private:
  static constexpr std::uint32_t fifo_turn = 32;
  wait_queue ready_;
  tcb* fifo_ = nullptr;      // first thread of the FIFO part, or null
  std::uint32_t picks_ = 0;  // picks made while the FIFO part was not empty
};

class progress_engine {
 public:
  virtual ~progress_engine() = default;
  // Between switches and when idle: handle whatever arrived. True if it did any work.
  virtual bool poll(scheduler& s) noexcept = 0;
  // Nothing is ready: wait for something to arrive, at most max_ns (< 0: no timer pending).
  // Must back off (sleep), never spin, so idle ranks leave the cores to busy ones.
  virtual void idle(scheduler& s, std::int64_t max_ns) noexcept = 0;
  // Nothing is ready and poll() found nothing: may run() return? May throw (e.g. deadlock).
  virtual bool finished(scheduler& s) = 0;
};

// Progress for a scheduler alone on one process: nothing to poll; idle sleeps until the next
// timer; finished when no thread is left; throws iso::error(deadlock) when threads remain but all
// are blocked with no timer pending.
class local_progress final : public progress_engine {
 public:
  bool poll(scheduler&) noexcept override { return false; }
  void idle(scheduler& s, std::int64_t max_ns) noexcept override;
  bool finished(scheduler& s) override;
};

class scheduler {
 public:
  // rank: the rank whose threads this scheduler runs (0 without MPI). policy/progress: owned by
  // the caller, must outlive the scheduler; null selects ready_deque / local_progress.
  explicit scheduler(int rank, sched_policy* policy = nullptr, progress_engine* progress = nullptr);
  ~scheduler();
  scheduler(const scheduler&) = delete;
  scheduler& operator=(const scheduler&) = delete;

  // The scheduler of this process (at most one exists at a time), or null.
  static scheduler* current() noexcept { return current_; }

  int rank() const noexcept { return rank_; }
  void set_rank(int rank) noexcept { rank_ = rank; }
  tcb* running() const noexcept { return running_; }
  progress_engine& progress() noexcept { return *progress_; }
  sched_policy& policy() noexcept { return *policy_; }

  // Runs threads until progress().finished() says so. Not from a migratable thread.
  void run();
  // Besides every switches_per_poll switches, poll progress at the first switch at least about
  // ns after the last poll (0, the default: only by switches), direct switches between threads
  // included. Work stealing sets it: threads that run for tens of microseconds would otherwise
  // leave steal requests unanswered for up to max_switches_per_poll of their runs (10 ms for
  // 40 us threads). Costs a cycle-counter read (prim::cycles, about 9 ns) per switch while set,
  // not a clock read; the first call that sets it calibrates the counter (about 100 us, once).
  void set_poll_interval_ns(std::int64_t ns) noexcept;

  // --- creating threads (spawn) ---
  // A new thread's heap, control block and guarded stack; not yet runnable. Throws iso::error.
  tcb* create_thread(const spawn_options& opts);
  // Creates the fiber and makes t ready: fork-join work (sched_policy::forked) when a thread
  // spawned it. pre: t->body set.
  void start_thread(tcb* t) noexcept;
  // Frees a thread that create_thread made but start_thread never saw.
  void discard_thread(tcb* t) noexcept;

  // --- from the running thread ---
  // running -> ready, without the switch: names the running thread's slot in switch_landing and
  // returns the context to resume (for context_resume_named). pre: a thread is running. See
  // next_context() for which.
  boost::context::fiber& prepare_yield() noexcept {
    tcb* self = running_;
    self->state = thread_state::ready;
    self->suspended_heap = current_heap;
    switch_landing = &self->self_ctx();
    return next_context(self, true);
  }
  // prepare_yield and the switch, for the runtime's own yields.
  void yield_running() noexcept { context_resume_named(prepare_yield()); }
  void sleep_running_until(std::int64_t deadline_ns);
  // The running thread blocks. pre: it is registered where its waker will find it.
  void block_running(wait_reason why) noexcept;
  // block_running without the switch, as prepare_yield: the running thread becomes blocked for
  // `why` with the heap current now, its slot named in switch_landing; returns the context to
  // resume (for context_resume_named). After the switch the caller sets tcb::wait to none.
  boost::context::fiber& prepare_block(wait_reason why) noexcept;
  // blocked -> ready (from a thread or the progress engine). pre: t is blocked on this rank.
  // fork_join: t's continuation is fork-join work (sched_policy::forked): t joined a thread that
  // just ended, or waits for the value of a future.
  void wake(tcb* t, bool fork_join = false) noexcept;
  // sleeping -> ready before its deadline (a sleep that waits for something else too, as
  // recv_for does). pre: t sleeps on this rank.
  void wake_sleeper(tcb* t) noexcept;
  // Wakes every thread of this rank blocked for `why` (from a thread or the progress engine).
  void wake_all(wait_reason why) noexcept;

  // The running thread t, whose body returned, ends (thread_main): its run is accounted (closing
  // the open window), it is torn down here on its own stack (teardown), and the context it ends on
  // is returned, with switch_landing named: the next ready thread's when it can run without the
  // scheduler (as in next_context; a joiner just woken by the teardown is at the head), else the
  // scheduler's, with running() null (resume() then has nothing left to do for it). The stack run
  // goes back to the pool on the context ended on (context.cpp).
  boost::context::fiber& finish_running(tcb* t) noexcept;

  // --- the thread table ---
  // A live thread on this rank, or null.
  tcb* find(thread_id id) const noexcept { return table_.find(id.bits()); }
  // True (once) if id finished here and was never joined; forgets it.
  bool take_finished(thread_id id) noexcept;
  std::size_t live_threads() const noexcept { return table_.size(); }
  // Threads of this rank blocked for `why`.
  std::size_t blocked(wait_reason why) const noexcept { return blocked_[static_cast<std::size_t>(why)]; }
  // Visits every live thread of this rank: f(tcb*). f must not add or remove threads.
  template <class F>
  void for_each_thread(F&& f) const {
    table_.for_each(f);
  }

  // --- load measurement (for the load balancer) ---
  // When on, each resume adds the cycles the thread ran to tcb::run_cycles (prim::cycles; on
  // direct switches between threads with short runs only one switch in about twelve reads it, see
  // window_), and passes of run() that find nothing to do add their cycles to idle_cycles() and
  // their CPU time to idle_cpu_ns() (read at the edges of idle stretches, not per pass: see
  // idle_open_). The first call that turns it on calibrates the cycle counter (about 100 us, once).
  void set_measure_load(bool on) noexcept;
  std::uint64_t idle_cycles() const noexcept { return idle_cycles_; }
  // CPU time (ns) this OS thread used in those passes: with idle_cycles(), what share of its core
  // the rank had while not idle. Read at the edges of idle stretches and estimated in between
  // (see idle_open_): it may overstate the exact figure by the time the rank was off its core in
  // the last idle_read_every_ns of each idle stretch, and the running total never understates it
  // (but for the calibration of the cycle counter, which converts the estimates). A difference of
  // two readings may: a reading inside a stretch replaces estimates made before the first one.
  std::int64_t idle_cpu_ns() const noexcept { return idle_cpu_ns_; }
  // Serial numbers below this have been handed out (on this rank, or, after a restart, anywhere).
  std::uint64_t next_serial() const noexcept { return next_serial_; }
  // After a restart: continue above every restored thread's serial, so that ids stay unique.
  void raise_next_serial(std::uint64_t next) noexcept { next_serial_ = std::max(next_serial_, next); }
  std::size_t sleeping_threads() const noexcept { return sleepers_; }
  // --- migration ---
  // Whether t (suspended, on this rank) can leave now: ready, sleeping, or blocked in a join, a
  // recv or a sync, and holding no iso::mutex nor a collective's shared result (tcb::locks_held).
  static bool movable(const tcb* t) noexcept;
  // Takes a movable thread out of the ready queue or timer list and the thread table; a sleeping
  // thread keeps the rest of its sleep in sleep_left_ns. Its state says how to resume it.
  void detach(tcb* t) noexcept;
  // A thread that arrived: into the table, then ready queue / timer list / left blocked.
  void attach(tcb* t) noexcept;
  // Work stealing: the thread to give a thief, or null: the oldest ready thread (policy's
  // oldest_ready) that is stealable, movable and has no migration pending, provided another ready
  // thread stays (a rank never goes idle to feed a thief: the two would trade its last thread back
  // and forth). It stays ready here; setting pending_dest and departing it (detach) takes it
  // out. At most ready_deque::steal_scan threads of each part looked at.
  tcb* oldest_stealable() const noexcept;

  // Called with a suspended thread whose pending_dest is set once it is movable (migration);
  // null: no migration support.
  using depart_hook = void (*)(scheduler& s, tcb* t) noexcept;
  void set_depart_hook(depart_hook h) noexcept { depart_hook_ = h; }
  // Called for a thread that just finished, before it is torn down. When set, it alone handles
  // the thread's joiner and the record that the thread finished (the migrate module tells the
  // thread's home rank); when null, both are local.
  using finish_hook = void (*)(scheduler& s, tcb* t) noexcept;
  void set_finish_hook(finish_hook h) noexcept { finish_hook_ = h; }

  // The canary and pointer guard every migratable thread runs with (guards.hpp): this process's
  // own until the runtime gives every rank the job's pair. pre (set): no thread is running.
  const tls_guards& thread_guards() const noexcept { return thread_guards_; }
  void set_thread_guards(const tls_guards& g) noexcept { thread_guards_ = g; }

  // Tracing: called after each time a thread ran, with when it started and stopped (now_ns), with
  // the system heap current (as every hook: what it allocates must not land in a thread's heap).
  using run_hook = void (*)(tcb* t, std::int64_t start_ns, std::int64_t end_ns) noexcept;
  void set_run_hook(run_hook h) noexcept { run_hook_ = h; }

 private:
  void resume(tcb* t) noexcept;
  // Where the running thread `self`, which suspends now (ready, or blocked), switches to. When the
  // next ready thread can run without the scheduler's bookkeeping (default policy, no migration
  // pending for self, not time to poll), that thread's context: it is taken from the ready set and
  // made running, self put back in the ready set first if `requeue`, and the accounting (load,
  // trace) done here. Otherwise the scheduler's.
  boost::context::fiber& next_context(tcb* self, bool requeue) noexcept {
    if (self->pending_dest < 0) {
      if (tcb* next = direct_next()) {
        if (requeue) default_policy_.awakened(self);
        if (run_hook_ != nullptr || (measure_ && !defer_measure(self))) {
          account_switch(self);
        } else {
          open_run(next);
        }
        start_running(next);
        return next->self_ctx();
      }
    }
    return sched_ctx_;
  }
  // The thread a switch away from the running one goes straight to, taken from the ready set:
  // the next ready one, when it can run without the scheduler's bookkeeping (default policy, not
  // time to poll); else null. With the default policy each call counts a switch toward the poll.
  tcb* direct_next() noexcept {
    if (policy_ != &default_policy_ || ++since_poll_ >= switches_per_poll_ || poll_due_by_time()) return nullptr;
    return default_policy_.pick_next();
  }
  // With a poll interval set: whether it has passed since the last poll.
  bool poll_due_by_time() const noexcept {
    return poll_interval_cycles_ != 0 && prim::cycles() - last_poll_cycles_ >= poll_interval_cycles_;
  }
  // t (ready, dequeued) becomes the running thread, with the heap that was current when it
  // suspended (its own, or the system heap inside a heap scope: a scope outlives suspensions).
  void start_running(tcb* t) noexcept {
    running_ = t;
    t->state = thread_state::running;
    current_heap = t->suspended_heap;
  }
  // Load measurement on a direct switch: true if self's run just ended joins the open window (no
  // clock read now), false if account_switch must read the clock: the window is full, or self's
  // runs are long or were never measured alone. A window then holds only runs whose estimates are
  // short, and a long run ends the window it comes in, measured alone when it follows a read: a
  // long run weighed by an estimate among short ones takes too little or too much of the window.
  bool defer_measure(tcb* self) noexcept {
    if (!window_takes(self)) return false;
    ++window_runs_;
    if (self->window_runs++ == 0) window_[window_threads_++] = self;
    return true;
  }
  // The last run of self, whose thread ends, joins the open window as an ended run (no clock
  // read, nothing of self kept): true, when the window has room, self has no run in it and self's
  // runs are short (weighed by its estimate), or self was never measured alone (one that ends in
  // its first run, as most children of a fork-join program do: its run takes what the estimates
  // of the window's other runs leave, see window_ and open_run).
  bool defer_end(tcb* self) noexcept {
    if (self->window_runs != 0 || window_runs_ >= window_len_) return false;
    if (self->run_estimate == 0) {
      ++ended_unmeasured_;
    } else if (self->run_estimate < long_run_cycles_) {
      ended_weight_ += self->run_estimate;
    } else {
      return false;
    }
    ++window_runs_;
    return true;
  }
  // The rule of defer_measure: the window has room and self's runs are short (measured alone,
  // below long_run_cycles_).
  bool window_takes(const tcb* self) const noexcept {
    return window_runs_ < window_len_ && self->run_estimate != 0 && self->run_estimate < long_run_cycles_;
  }
  // A run of next starts on a direct switch, the window open: when the window holds an ended run
  // never measured alone and next's runs are long, the window closes first (a clock read): weighed
  // by its estimate beside such an ended run, a long run would give it its time or take its own.
  // A run of a thread never measured alone (a child about to run, most often) after such an ended
  // run notes only when it starts (first_run_start_: a counter read, no window closed): if it
  // ends, it is one more such ended run and the note is unused; if it suspends, close_window
  // splits the window there, so that it gets its own run and the ended runs the time before it.
  void open_run(const tcb* next) noexcept {
    if (ended_unmeasured_ == 0) return;
    if (next->run_estimate == 0) {
      first_run_start_ = prim::cycles();
    } else if (next->run_estimate >= long_run_cycles_) {
      close_window(nullptr);
    }
  }
  // The window holds nothing from now (the threads' tcb::window_runs are the caller's to clear).
  void clear_window() noexcept {
    window_threads_ = 0;
    window_runs_ = 0;
    window_len_ = 0;
    ended_weight_ = 0;
    ended_unmeasured_ = 0;
  }
  // The thread t ends and defer_end refused its last run: its runs in the window, and that run,
  // become ended runs of the window (weighed by t's estimate; when t was never measured alone,
  // taking what the estimates of the window's other runs leave), so that nothing of t is left in
  // it; no clock read: the caller closes the window (close_window(nullptr)) once t is torn down,
  // so that the teardown is t's time (the rank's background), not the next thread's run.
  void end_in_window(tcb* t) noexcept;
  // Ends self's run for load measurement and tracing (and starts the next one's clocks); with load
  // measurement, ends the open window too (credit_window). Out of line, so that the yield path
  // without either saves no registers.
  [[gnu::noinline]] void account_switch(tcb* self) noexcept;
  // Idle accounting, see idle_open_: a stretch starts (after a poll that found nothing), and an
  // idle pass of it ends.
  void open_idle_stretch() noexcept;
  void credit_idle_pass() noexcept;
  // Tracing: the run hook for self's run, which ends now; the next run starts now.
  void trace_run(tcb* self) noexcept;
  // Reads the clock and ends the open window with the run of self (running now, or whose run just
  // ended; null: the window's last run was an ended one, see defer_end and end_in_window):
  // credit_window, and the next run starts now.
  void close_window(tcb* self) noexcept;
  // Shares `cycles`, the time since the last clock read, among the runs of the window and self's
  // run (the last; none when self is null), and chooses the next window's length. See window_.
  void credit_window(tcb* self, std::uint64_t cycles) noexcept;
  // The running thread `self` suspends into the scheduler; returns when resumed (possibly on
  // another rank: afterwards only `self` and process-wide lookups such as current() are valid).
  void switch_out(tcb* self) noexcept {
    self->suspended_heap = current_heap;
    context_switch(sched_ctx_, &self->self_ctx());
  }
  void teardown(tcb* t) noexcept;
  // Ends the heap of a thread that is gone, keeping its first chunk warm for the next spawn
  // (stack_pool) when the pool takes it.
  static void release_heap(heap* h) noexcept;
  void wake_expired(std::int64_t now) noexcept;
  void insert_timer(tcb* t) noexcept;
  void remove_timer(tcb* t) noexcept;
  std::int64_t next_deadline() const noexcept { return timers_.empty() ? -1 : timers_.head->wake_ns; }

  // Switches between progress polls while threads run (a poll, MPI_Iprobe and friends, costs far
  // more than a switch): from the minimum, doubling after each poll that found nothing to do up
  // to the maximum (nothing in flight: a loop of yields then pays one poll per 256 switches),
  // back to the minimum after a poll that did work and after an idle pass.
  static constexpr std::uint64_t min_switches_per_poll = 32;
  static constexpr std::uint64_t max_switches_per_poll = 256;

  static inline scheduler* current_ = nullptr;
  int rank_;
  ready_deque default_policy_;
  local_progress default_progress_;
  sched_policy* policy_;
  progress_engine* progress_;
  tcb* running_ = nullptr;           // the thread executing now (updated by direct switches too)
  boost::context::fiber sched_ctx_;   // the scheduler's context while a thread runs; empty otherwise
  // Where the switch away from a thread that ended lands (the empty context context.cpp's
  // thread_entry leaves):
  // not its TCB, which went back with its heap in teardown.
  boost::context::fiber ended_landing_;
  tls_guards thread_guards_;          // see thread_guards()
  std::uint64_t since_poll_ = 0;      // switches since progress().poll() last ran
  std::uint64_t switches_per_poll_ = min_switches_per_poll;  // the current interval, see above
  std::uint64_t poll_interval_cycles_ = 0;  // see set_poll_interval_ns; 0: none
  std::uint64_t last_poll_cycles_ = 0;      // prim::cycles() at the last poll, while an interval is set
  std::uint64_t run_start_ = 0;       // prim::cycles() when running_ started, if measuring
  std::int64_t trace_start_ns_ = 0;   // now_ns() when running_ started, if tracing
  std::uint64_t next_serial_ = 1;

  // Timer list sorted by wake_ns ascending, through tcb::next/prev; sleepers_ = its length.
  wait_queue timers_;
  std::size_t sleepers_ = 0;
  std::size_t blocked_[wait_reasons] = {};  // blocked threads per wait_reason
  bool measure_ = false;
  // Sampled load measurement. A cycle-counter read costs 9-25 ns here, as much as a switch, so
  // direct switches between threads whose runs are short do not read it each time: the runs
  // between two reads (the window: window_runs_ runs of the threads window_[0, window_threads_),
  // tcb::window_runs of each, then the run that ends at the read) share the interval in
  // proportion to each thread's tcb::run_estimate, its last run measured alone. A window also
  // holds the last runs of threads that ended in it (defer_end, end_in_window): counted in
  // window_runs_, their weights kept here (ended_weight_, ended_unmeasured_), their shares
  // credited to no thread (the rank's background, like all the time of threads that are gone).
  // Invariants: the credits of a window and its ended runs' shares sum to its interval exactly
  // (the live threads' total, and so the rank's background time, stay exact); every thread in
  // window_ is live here (a thread that ends while in it leaves it, its runs becoming ended runs,
  // end_in_window; a thread that leaves may be in the window, when the running thread moves it,
  // and detach() closes the window first); tcb::window_runs is 0 outside the window. The ended
  // runs never measured alone take what the estimates of the window's other runs leave of its
  // interval (none when those exceed it), so that the rest is their runs and their teardowns. A
  // run that starts after such an ended run in the window is a run of a thread whose runs are
  // short, weighed by its estimate, or a first run, whose start is noted (a counter read, no
  // window closed): if it ends, it is one more such ended run; if it suspends, the window ends at
  // its start and it is measured alone (open_run, close_window; open_run closes the window before
  // any long run). So a joiner that spawns and joins such children in a loop closes one window
  // per window_len_ children, not one per child. A window closed by a thread's end leaves the
  // next one the rest of its length (window_len_ less its runs). After any other window of
  // several runs the next run is measured alone (window_len_ 0), refreshing that thread's
  // estimate (or, if it ends, the run after it); after a run measured alone the next window holds
  // no run if that run was long (>= long_run_cycles_: a read costs at most 1.25 % of it, so long
  // runs, those a balancer cares about, are measured exactly), else between min_window and
  // 2 * min_window - 1 runs, drawn at random so that a window never keeps step with a round robin
  // (which would refresh the same thread's estimate every time).
  static constexpr std::uint32_t min_window = 16;
  tcb* window_[2 * min_window] = {};
  std::uint32_t window_threads_ = 0;
  std::uint32_t window_runs_ = 0;
  std::uint32_t window_len_ = 0;
  std::uint64_t ended_weight_ = 0;       // estimates of the ended runs in the window, cycles
  std::uint32_t ended_unmeasured_ = 0;   // ended runs in the window never measured alone
  // prim::cycles() when the running thread's run started, if it was never measured alone and
  // started after an ended run never measured alone in the open window (open_run); else stale.
  std::uint64_t first_run_start_ = 0;
  std::uint32_t window_rng_ = 0x9e3779b9u;   // xorshift32 state for the window lengths
  std::uint64_t long_run_cycles_ = 0;        // 2 us in cycles, set by set_measure_load
  std::uint64_t idle_cycles_ = 0;            // cycles of run() passes that found nothing to do
  std::int64_t idle_cpu_ns_ = 0;             // CPU time of those passes, in ns (see idle_cpu_ns())
  // Idle accounting without a CPU-clock read per pass (prim::thread_cpu_ns is a system call of
  // about 0.3-0.4 us here, as long as the rest of an idle pass taken together; two per pass made a
  // receiving rank see an arriving thread about 0.35 us later on average). An idle stretch is a
  // run of consecutive idle passes (those that reach the end of progress().idle()); it opens after
  // the first poll that found nothing (that poll is background, as is every pass that did work),
  // with a CPU-clock read, and ends, with no read, at the first pass that finds work, at a
  // balancing step that makes threads ready, or when run() returns. Each idle pass adds its
  // cycles since the previous mark (the stretch's start or the previous pass's end) to
  // idle_cycles_ and, as an estimate, the same wall time to idle_cpu_ns_; the CPU clock is read
  // at the end of a pass that took idle_lost_core_ns or more (a rank that keeps its core passes in
  // about 2 us here: a longer pass most likely waited for the core, or slept), or when
  // idle_read_every_ns passed since the last read, and then idle_cpu_ns_ gets the exact CPU time
  // of every pass since that read. Invariant while a stretch is open: idle_cpu_ns_ ==
  // idle_cpu_at_read_ + the estimates of the passes that ended after idle_read_cycles_. The
  // estimate counts time off the core as CPU time: the error is at most the off-core time of
  // passes that each took less than idle_lost_core_ns, within less than idle_read_every_ns at a
  // stretch's end; it only ever overstates idle CPU time (understating the share of its core the
  // rank had while busy); at most one read per idle_read_every_ns of idleness, none on the way
  // from an arrival to the thread running.
  static constexpr std::int64_t idle_lost_core_ns = 4'000;
  static constexpr std::int64_t idle_read_every_ns = 20'000;
  bool idle_open_ = false;                   // an idle stretch is open (only while measure_)
  std::uint64_t idle_mark_ = 0;              // prim::cycles() at the stretch's start or its last pass's end
  std::uint64_t idle_read_cycles_ = 0;       // prim::cycles() at the stretch's last CPU-clock read
  std::int64_t idle_cpu_read_ = 0;           // prim::thread_cpu_ns() at that read
  std::int64_t idle_cpu_at_read_ = 0;        // idle_cpu_ns_ right after that read (exact up to there)
  std::uint64_t idle_lost_core_cycles_ = 0;  // idle_lost_core_ns in cycles, set by set_measure_load
  std::uint64_t idle_read_every_cycles_ = 0; // idle_read_every_ns in cycles, likewise
  double ns_per_cycle_ = 1;                  // likewise

  // Every live thread on this rank (invariant: exactly those whose state is not finished and that
  // have not departed), keyed by thread_id::bits().
  thread_table table_;
  // Threads that finished here unjoined; a later join returns at once.
  finished_set finished_;
  depart_hook depart_hook_ = nullptr;
  run_hook run_hook_ = nullptr;
  finish_hook finish_hook_ = nullptr;
};

// Hooks the migration module installs (null without it).
// migrate_to_fn: moves the running thread `self` to rank dest; returns on dest. Throws iso::error.
using migrate_to_fn = void (*)(scheduler& s, tcb* self, int dest);
extern migrate_to_fn migrate_to_impl;
// join_fn: the running thread `self` registers its join of t, wherever t is: sets
// self->waiting_for to t until t has finished (cleared, with self->join_status set and self woken,
// when the answer comes; perhaps at once), or returns leaving it clear when t has finished and
// was not joined. Throws iso::error (unknown_thread, already_joined). iso::join then waits.
using join_fn = void (*)(scheduler& s, tcb* self, thread_id t);
extern join_fn join_impl;

// Throws iso::error(no_runtime) naming `call`: this process has no runtime (or no part of it
// that `call` needs).
[[noreturn]] void raise_no_runtime(const char* call);
// *part, a part of this process's runtime (its scheduler, engine, balancer...) as its current()
// gives it, or iso::error(no_runtime) naming `call` when there is none.
template <class T>
T& runtime_part_or_throw(T* part, const char* call) {
  if (part == nullptr) raise_no_runtime(call);
  return *part;
}
// The scheduler of this process, or iso::error(no_runtime) naming `call`.
inline scheduler& scheduler_or_throw(const char* call) { return runtime_part_or_throw(scheduler::current(), call); }
// The running migratable thread, or iso::error (no_runtime, not_in_thread) naming `call`.
tcb* running_or_throw(const char* call);

}  // namespace iso::detail
