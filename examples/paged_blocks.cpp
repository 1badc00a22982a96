// Paged memory that frees whole blocks: what an engine with a vLLM-style block pool sees.
//
// One layer of a Llama-3-8B-like model (8 KV heads x 128, fp16) in a pool of 16-token blocks.
// The engine hands blocks to the sequence's table as it grows (a shuffled free list, as a block
// manager would), appends a 4096-token prompt, and LagKV (one kept set per layer: per-head
// scores summed) compresses it: the kept tokens are packed into the first blocks of the table
// and the emptied blocks come back through the release callback. Then 600 decode steps with
// StreamingLLM on a second sequence show the table staying at a steady size.
#include <lagkv/paged.hpp>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

namespace {

using lagkv::f16;
using lagkv::index_t;

constexpr index_t kHeads = 8, kDim = 128, kBlock = 16, kPoolBlocks = 1024;
constexpr index_t kBlockBytes = kBlock * kHeads * kDim * 2 * 2;  // K and V, fp16

/// The engine's side: a free list and, per sequence, a table.
struct block_manager {
  std::vector<std::int32_t> free_ids;
  explicit block_manager(unsigned seed) {
    free_ids.resize(kPoolBlocks);
    std::iota(free_ids.begin(), free_ids.end(), 0);
    std::mt19937 rng(seed);
    std::shuffle(free_ids.begin(), free_ids.end(), rng);
  }
  void grow(std::vector<std::int32_t>& storage, lagkv::block_table& t, index_t tokens) {
    while (t.count * kBlock < tokens) {
      storage[static_cast<std::size_t>(t.count++)] = free_ids.back();
      free_ids.pop_back();
    }
    t.ids = storage.data();
  }
};

std::vector<f16> random_rows(index_t tokens, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  std::vector<f16> x(static_cast<std::size_t>(tokens * kHeads * kDim));
  for (std::size_t i = 0; i < x.size(); ++i)
    x[i] = lagkv::to_f16(static_cast<float>(static_cast<index_t>(i) % kDim % 7) - 3.0f + nd(rng));
  return x;
}

void print_table(const char* label, const lagkv::block_table& t) {
  std::printf("%-22s %4ld blocks:", label, static_cast<long>(t.count));
  for (index_t i = 0; i < std::min<index_t>(t.count, 10); ++i) std::printf(" %d", t.ids[i]);
  std::printf("%s\n", t.count > 10 ? " ..." : "");
}

}  // namespace

int main() {
  std::vector<f16> k_pool(static_cast<std::size_t>(kPoolBlocks * kBlock * kHeads * kDim)), v_pool(k_pool.size());
  block_manager blocks(7);
  std::mt19937 rng(42);

  // ---- A 4096-token prompt, LagKV ------------------------------------------------------------
  lagkv::paged_config cfg;
  cfg.num_blocks = kPoolBlocks;
  cfg.block_size = kBlock;
  cfg.kv_heads = kHeads;
  cfg.head_dim = kDim;
  cfg.max_tokens = 8192;
  cfg.aggregate = lagkv::head_aggregation::sum;
  lagkv::lagkv_params lp;  // the authors' sink and ratio, a shorter lag for a short prompt
  lp.lag = 256;
  lagkv::paged_layer<f16, lagkv::lagkv_policy> layer(cfg, k_pool.data(), v_pool.data(), lagkv::lagkv_policy(lp));
  layer.set_release_callback([&](const std::int32_t* ids, index_t n) {
    blocks.free_ids.insert(blocks.free_ids.end(), ids, ids + n);  // back to the allocator
  });

  const index_t prompt = 4096;
  std::vector<std::int32_t> table_storage(static_cast<std::size_t>(kPoolBlocks));
  lagkv::block_table table;
  blocks.grow(table_storage, table, prompt);
  std::printf("LagKV (sink %ld, lag %ld, ratio %.2f), %ld KV heads x %ld, fp16, %ld-token blocks\n",
              static_cast<long>(lp.sink), static_cast<long>(lp.lag), lp.ratio, static_cast<long>(kHeads),
              static_cast<long>(kDim), static_cast<long>(kBlock));
  print_table("table before:", table);
  const std::size_t free_before = blocks.free_ids.size();
  const auto rows = random_rows(prompt, rng), vrows = random_rows(prompt, rng);
  const lagkv::paged_result r = layer.append(rows.data(), vrows.data(), prompt, table);
  print_table("table after:", table);
  std::printf("tokens %ld -> %ld, blocks %ld -> %ld, %zu block ids handed back (free list %zu -> %zu)\n",
              static_cast<long>(r.length_before), static_cast<long>(r.length_after), static_cast<long>(r.blocks_before),
              static_cast<long>(r.blocks_after), r.freed.size(), free_before, blocks.free_ids.size());
  std::printf("first freed ids:");
  for (std::size_t i = 0; i < std::min<std::size_t>(r.freed.size(), 10); ++i) std::printf(" %d", r.freed[i]);
  std::printf("\nbytes saved: %zu blocks x %ld B = %.2f MiB of %.2f MiB\n", r.freed.size(),
              static_cast<long>(kBlockBytes), static_cast<double>(r.freed.size()) * kBlockBytes / (1 << 20),
              static_cast<double>(r.blocks_before) * kBlockBytes / (1 << 20));
  std::printf("original positions of slots 0..19:");
  for (index_t i = 0; i < 20; ++i)
    std::printf(" %ld", static_cast<long>(layer.positions()[static_cast<std::size_t>(i)]));
  std::printf(" ...\n\n");

  // ---- Decode with StreamingLLM: the table stays bounded -----------------------------------------
  lagkv::streaming_params sp;
  sp.sink = 4;
  sp.window = 252;
  sp.interval = 16;  // evict every 16 steps: one block's worth
  cfg.max_tokens = 512;
  lagkv::paged_layer<f16, lagkv::streaming_policy> chat(cfg, k_pool.data(), v_pool.data(), lagkv::streaming_policy(sp));
  std::vector<std::int32_t> chat_storage(static_cast<std::size_t>(kPoolBlocks));
  lagkv::block_table chat_table;
  index_t freed_total = 0, peak = 0;
  chat.set_release_callback([&](const std::int32_t* ids, index_t n) {
    blocks.free_ids.insert(blocks.free_ids.end(), ids, ids + n);
    freed_total += n;
  });
  std::printf("StreamingLLM (sink %ld, window %ld, every %ld steps), 600 decode steps:\n", static_cast<long>(sp.sink),
              static_cast<long>(sp.window), static_cast<long>(sp.interval));
  for (index_t step = 0; step < 600; ++step) {
    const auto k1 = random_rows(1, rng), v1 = random_rows(1, rng);
    blocks.grow(chat_storage, chat_table, chat.length() + 1);
    chat.append(k1.data(), v1.data(), 1, chat_table);
    peak = std::max(peak, chat_table.count);
    if (step % 100 == 99)
      std::printf("  step %3ld: %3ld tokens held (next position %ld), %2ld blocks\n", static_cast<long>(step + 1),
                  static_cast<long>(chat.length()), static_cast<long>(chat.tokens_seen()),
                  static_cast<long>(chat_table.count));
  }
  std::printf("peak %ld blocks (%ld would hold every token); %ld block ids handed back, %.2f MiB\n",
              static_cast<long>(peak), static_cast<long>(lagkv::blocks_for(600, kBlock)),
              static_cast<long>(freed_total), static_cast<double>(freed_total) * kBlockBytes / (1 << 20));
  return 0;
}
