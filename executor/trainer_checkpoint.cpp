// --save, --resume and --weights-out: each rank saves what it owns, weights and AdamW m and v,
// in the layout of its own buffers (executor/checkpoint.hpp); a resumed run of the same plan has
// the same layout. A backend whose buffers are not host memory is staged through host copies.
#include <filesystem>
#include <fstream>

#include "executor/checkpoint.hpp"
#include "executor/trainer_impl.hpp"

namespace loom::exec {

Expected<std::vector<Section>> Trainer::sections(std::vector<std::vector<float>>& staging, bool download) {
  Buffer* const bufs[] = {&params_, &adam_m_, &adam_v_};
  std::vector<Section> out;
  staging.assign(compute_->host_memory() ? 0 : 3, {});
  for (size_t i = 0; i < 3; ++i) {
    Buffer& b = *bufs[i];
    if (compute_->host_memory()) {
      out.push_back({b.data(), b.size()});
      continue;
    }
    staging[i].resize(static_cast<size_t>(b.size()));
    if (download)
      if (auto st = compute_->download(staging[i].data(), b.data(), b.size()); !st) return st.error();
    out.push_back({staging[i].data(), b.size()});
  }
  return out;
}

Status Trainer::upload_sections(const std::vector<std::vector<float>>& staging) {
  Buffer* const bufs[] = {&params_, &adam_m_, &adam_v_};
  for (size_t i = 0; i < staging.size(); ++i)
    if (auto st = compute_->upload(bufs[i]->data(), staging[i].data(), bufs[i]->size()); !st) return st;
  return ok_status();
}

Status Trainer::save(int64_t step) {
  const RankHeader h{step, comm_.world(), rank_, plan_fingerprint(plan_)};
  std::vector<std::vector<float>> staging;
  auto secs = sections(staging, true);
  if (!secs) return secs.error();
  bool lost = false;
  auto st = save_checkpoint(host_raw(), opt_.save_dir, h, *secs, lost, opt_.save_fault);
  if (!st) ending_ = lost ? Ending::abort : Ending::together;
  return st;
}

Expected<int64_t> Trainer::load() {
  std::vector<std::vector<float>> staging;
  auto secs = sections(staging, false);
  if (!secs) return secs.error();
  bool lost = false;
  auto step = load_checkpoint(host_raw(), opt_.resume_dir, plan_fingerprint(plan_), *secs, lost);
  ending_ = lost ? Ending::abort : Ending::refused;
  if (!step) return step;
  // Every rank read the same index, so every rank refuses together.
  if (*step >= opt_.steps)
    return make_error("--steps", "must be above the checkpoint's step " + std::to_string(*step) + " in " +
                                     opt_.resume_dir + ": nothing to train (got " + std::to_string(opt_.steps) + ")");
  if (auto st = upload_sections(staging); !st) return st.error();
  return step;
}

// This rank's share of the full model in cpu::Gpt's layout: the tensors it owns (dp rank 0; tp
// rank 0 for replicated ones) in place, zeros elsewhere. ZeRO-3 gathers every unit on every rank.
Expected<std::vector<float>> Trainer::full_model_share() {
  std::vector<float> full(static_cast<size_t>(full_model_), 0.0f), local;
  for (const Unit& u : layout_.units) {
    auto P = acquire(u);
    if (!P) return P.error();
    if ((coords_.dp != 0 || coords_.cp != 0) && !plan_.model.is_moe()) continue;  // MoE: expert shards by expert-data-parallel rank
    local.resize(static_cast<size_t>(u.size));
    if (auto st = compute_->download(local.data(), *P, u.size); !st) return st.error();
    for (const auto& t : u.tensors) {
      if (!owns_share(t)) continue;
      for_each_element(t, shard_coords(),
                       [&](int64_t li, int64_t fi) { full[static_cast<size_t>(fi)] = local[static_cast<size_t>(li)]; });
    }
  }
  return full;
}

// The full model: a sum over the world of every rank's share assembles it, rank 0 writes it.
Status Trainer::write_weights() {
  auto full = full_model_share();
  if (!full) return full.error();
  if (auto st = host_raw().all_reduce(world_, full->data(), full_model_); !st) return st;
  if (rank_ != 0) return ok_status();
  const std::string tmp = opt_.weights_out + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(full->data()), static_cast<std::streamsize>(full->size() * sizeof(float)));
    f.flush();
    if (!f) {
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);  // leave no half-written file behind
      return make_error("--weights-out", "cannot write " + tmp);
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, opt_.weights_out, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    return make_error("--weights-out", opt_.weights_out + ": rename failed: " + ec.message());
  }
  return ok_status();
}

}  // namespace loom::exec
