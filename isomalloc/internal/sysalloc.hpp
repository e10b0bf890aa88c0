// The system allocator, reached directly.
//
// Once the threads module interposes malloc, a plain `new` made while a migratable thread runs
// lands in that thread's heap. Runtime state must never live there (it would migrate, or dangle),
// so every container of the runtime's own uses sys_allocator, which calls glibc's entry points
// (__libc_malloc and friends) and so bypasses the interposition whatever thread is running.
#pragma once

#include <cstddef>
#include <map>
#include <new>
#include <unordered_map>
#include <vector>

extern "C" {
void* __libc_malloc(std::size_t);
void __libc_free(void*);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void* __libc_valloc(std::size_t);
void* __libc_pvalloc(std::size_t);
}

namespace iso::detail {

template <class T>
struct sys_allocator {
  using value_type = T;
  sys_allocator() noexcept = default;
  template <class U>
  sys_allocator(const sys_allocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    void* p = __libc_malloc(n * sizeof(T));
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) noexcept { __libc_free(p); }
  template <class U>
  bool operator==(const sys_allocator<U>&) const noexcept { return true; }
};

template <class T>
using sys_vector = std::vector<T, sys_allocator<T>>;
template <class K, class V, class Cmp = std::less<K>>
using sys_map = std::map<K, V, Cmp, sys_allocator<std::pair<const K, V>>>;
template <class K, class V, class Cmp = std::less<K>>
using sys_multimap = std::multimap<K, V, Cmp, sys_allocator<std::pair<const K, V>>>;
template <class K, class V, class H = std::hash<K>>
using sys_unordered_map =
    std::unordered_map<K, V, H, std::equal_to<K>, sys_allocator<std::pair<const K, V>>>;

}  // namespace iso::detail
