#pragma once
/// \file executor.hpp
/// \brief Parallelism the engine controls: scoring many (layer, head) pairs runs through an
/// executor the caller passes in. lagkv never starts a thread on its own; the default executor
/// is serial, and `lagkv::thread_pool` exists only when the user constructs one.
///
/// The executor contract (any type with this member works, no base class needed):
/// \code
///   struct my_executor {
///     // Calls fn(i) exactly once for every i in [0, n), possibly concurrently and in any order,
///     // and returns when all calls have returned. If calls throw, rethrows one of the exceptions
///     // after the others have finished (indices not yet started may be skipped).
///     template <class Fn> void parallel_for(index_t n, Fn&& fn);
///   };
/// \endcode
/// An engine adapts its own pool in a few lines (see `executor_ref` for a run-time, non-template
/// form that costs one indirect call per index, never per token).

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "lagkv/error.hpp"

namespace lagkv {

/// \brief Runs every index on the calling thread, in order. The default everywhere.
struct serial_executor {
  template <class Fn>
  void parallel_for(index_t n, Fn&& fn) const {
    for (index_t i = 0; i < n; ++i) fn(i);
  }
};

namespace detail {
template <class E, class = void>
struct has_parallel_for : std::false_type {};
template <class E>
struct has_parallel_for<E, std::void_t<decltype(std::declval<E&>().parallel_for(index_t{}, std::declval<void (*)(index_t)>()))>>
    : std::true_type {};
}  // namespace detail

/// True when `E` satisfies the executor contract above.
template <class E>
inline constexpr bool is_executor_v = detail::has_parallel_for<std::remove_reference_t<E>>::value;

/// \brief Calls `fn(i)` for i in [0, n) through `ex` (see the contract in the file comment).
template <class Executor, class Fn>
void parallel_for(Executor&& ex, index_t n, Fn&& fn) {
  static_assert(is_executor_v<Executor>,
                "lagkv::parallel_for: the executor needs a member `parallel_for(index_t n, Fn&& fn)` "
                "that calls fn(i) once for each i in [0, n) and returns when all are done");
  LAGKV_CHECK(n >= 0, "n=", n, ": must be >= 0");
  if (n == 0) return;
  ex.parallel_for(n, std::forward<Fn>(fn));
}

/// \brief Non-owning, type-erased reference to any executor: what a run-time configured engine
/// stores. One indirect call per parallel_for and one per index, never per token.
class executor_ref {
 public:
  /// References `ex`, which must outlive this object.
  template <class E, class = std::enable_if_t<!std::is_same_v<std::decay_t<E>, executor_ref> && is_executor_v<E>>>
  executor_ref(E& ex)  // NOLINT(google-explicit-constructor): a reference wrapper converts implicitly
      : self_(const_cast<void*>(static_cast<const void*>(std::addressof(ex)))), run_(&run_impl<E>) {}

  template <class Fn>
  void parallel_for(index_t n, Fn&& fn) const {
    using F = std::remove_reference_t<Fn>;
    run_(self_, n, const_cast<void*>(static_cast<const void*>(std::addressof(fn))),
         [](void* ctx, index_t i) { (*static_cast<F*>(ctx))(i); });
  }

 private:
  using task_fn = void (*)(void* ctx, index_t i);
  template <class E>
  static void run_impl(void* self, index_t n, void* ctx, task_fn task) {
    static_cast<E*>(self)->parallel_for(n, [ctx, task](index_t i) { task(ctx, i); });
  }

  void* self_;
  void (*run_)(void* self, index_t n, void* ctx, task_fn task);
};

/// \brief A small fixed pool the user creates explicitly: `thread_pool pool(2);` runs each
/// parallel_for on the calling thread plus `threads - 1` workers. Indices are handed out one at
/// a time from an atomic counter, so uneven (layer, head) costs balance themselves.
/// \note Thread safety: parallel_for may be called from several threads (calls are serialised);
/// a parallel_for issued from inside one of this pool's tasks runs serially on that thread
/// instead of deadlocking.
class thread_pool {
 public:
  /// \param threads total threads of execution, >= 1 (1 = serial, no worker is started).
  /// \throws lagkv::error when threads < 1.
  explicit thread_pool(unsigned threads) {
    LAGKV_CHECK(threads >= 1, "threads=", threads, ": must be >= 1");
    workers_.reserve(threads - 1);
    for (unsigned i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
  }
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;
  ~thread_pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
  }

  /// Threads of execution a parallel_for uses (the caller included).
  unsigned threads() const { return static_cast<unsigned>(workers_.size()) + 1; }

  template <class Fn>
  void parallel_for(index_t n, Fn&& fn) {
    if (n <= 0) return;
    if (workers_.empty() || current_pool() == this || n == 1) {
      for (index_t i = 0; i < n; ++i) fn(i);
      return;
    }
    std::lock_guard<std::mutex> submit(submit_mutex_);
    job j;
    j.n = n;
    j.ctx = const_cast<void*>(static_cast<const void*>(std::addressof(fn)));
    j.task = [](void* ctx, index_t i) { (*static_cast<std::remove_reference_t<Fn>*>(ctx))(i); };
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &j;
      ++generation_;
    }
    wake_.notify_all();
    run(j);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return j.active == 0 && j.joined == workers_.size(); });
    job_ = nullptr;
    lock.unlock();
    if (j.error) std::rethrow_exception(j.error);
  }

 private:
  struct job {
    index_t n = 0;
    void* ctx = nullptr;
    void (*task)(void*, index_t) = nullptr;
    std::atomic<index_t> next{0};
    std::size_t active = 0;  // workers inside run(); guarded by mutex_
    std::size_t joined = 0;  // workers that picked this job up; guarded by mutex_
    std::exception_ptr error;
    std::mutex error_mutex;
  };

  static thread_pool*& current_pool() {
    thread_local thread_pool* p = nullptr;
    return p;
  }

  void run(job& j) {
    thread_pool* const outer = current_pool();
    current_pool() = this;
    for (;;) {
      const index_t i = j.next.fetch_add(1, std::memory_order_relaxed);
      if (i >= j.n) break;
      try {
        j.task(j.ctx, i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(j.error_mutex);
        if (!j.error) j.error = std::current_exception();
        j.next.store(j.n, std::memory_order_relaxed);  // stop handing out new indices
      }
    }
    current_pool() = outer;
  }

  void worker_loop() {
    std::size_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || (job_ != nullptr && generation_ != seen); });
      if (stop_) return;
      seen = generation_;
      job& j = *job_;
      ++j.joined;
      ++j.active;
      lock.unlock();
      run(j);
      lock.lock();
      --j.active;
      if (j.active == 0 && j.joined == workers_.size()) done_.notify_all();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex submit_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  job* job_ = nullptr;
  std::size_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace lagkv
