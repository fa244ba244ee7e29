// cpu::Gpt: parameter layout and count, whole-model gradients, FLOP accounting, training and
// determinism, on tiny configurations of both families.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

#include "executor/cpu/gpt.hpp"
#include "executor/cpu/grad_norm.hpp"
#include "executor/cpu/rng.hpp"
#include "executor/cpu/synthetic_data.hpp"

using namespace loom::cpu;
using loom::Family;
using loom::ModelSpec;

namespace {

ModelSpec tiny_gpt(bool tied = true) {
  ModelSpec s;
  s.name = "tiny-gpt";
  s.family = Family::gpt;
  s.layers = 2;
  s.hidden = 16;
  s.heads = 4;
  s.kv_heads = 4;
  s.ffn_hidden = 64;
  s.vocab = 37;
  s.seq_len = 8;
  s.tied_embeddings = tied;
  return s;
}

ModelSpec tiny_llama(bool tied = false) {
  ModelSpec s;
  s.name = "tiny-llama";
  s.family = Family::llama;
  s.layers = 2;
  s.hidden = 16;
  s.heads = 4;
  s.kv_heads = 2;
  s.ffn_hidden = 32;
  s.vocab = 37;
  s.seq_len = 8;
  s.tied_embeddings = tied;
  return s;
}

// The lead's parameter formulas (sim/), written out independently of the layout code.
int64_t formula_params(const ModelSpec& m) {
  const int64_t h = m.hidden, f = m.ffn_hidden, V = m.vocab, kv = m.kv_heads * m.hidden / m.heads;
  if (m.family == Family::gpt) {
    const int64_t per_layer =
        2 * h + h * (h + 2 * kv) + (h + 2 * kv) + h * h + h + 2 * h + h * f + f + f * h + h;
    return m.layers * per_layer + V * h + m.seq_len * h + 2 * h + (m.tied_embeddings ? 0 : V * h);
  }
  const int64_t per_layer = h + h * h + 2 * h * kv + h * h + h + 3 * h * f;
  return m.layers * per_layer + V * h + h + (m.tied_embeddings ? 0 : V * h);
}

struct Batch {
  std::vector<int32_t> inputs, targets;
};

Batch make_batch(const SyntheticStream& stream, int64_t first, int64_t B, int64_t T) {
  Batch b{std::vector<int32_t>(static_cast<size_t>(B * T)),
          std::vector<int32_t>(static_cast<size_t>(B * T))};
  synthetic_batch(b.inputs.data(), b.targets.data(), stream, first, B, T);
  return b;
}

template <class Real>
GptModel<Real> make_model(const ModelSpec& spec, const GptOptions& options = {}) {
  auto m = GptModel<Real>::create(spec, options);
  INFO((m ? std::string() : m.error().message));
  REQUIRE(m.ok());
  return std::move(m).value();
}

// Trains `steps` AdamW steps on a stream that repeats every T tokens; returns the loss per step.
std::vector<float> train(const ModelSpec& spec, int64_t steps) {
  Gpt model = make_model<float>(spec);
  const int64_t B = 4, T = spec.seq_len;
  const SyntheticStream stream{spec.vocab, 5, T};
  AdamWConfig cfg;
  cfg.lr = 1e-2;
  cfg.weight_decay = 0.1;
  std::vector<float> losses;
  FlopCounter flops;
  for (int64_t step = 1; step <= steps; step++) {
    const Batch b = make_batch(stream, (step - 1) * B, B, T);
    model.zero_grad();
    losses.push_back(model.forward(b.inputs.data(), b.targets.data(), B, T, flops).value());
    REQUIRE(model.backward(flops).ok());
    clip_grad_norm(model.grads().data(), static_cast<int64_t>(model.grads().size()), 1.0);
    model.update(cfg, step);
  }
  return losses;
}

}  // namespace

TEST_CASE("parameter count equals the cost model's formula", "[gpt][params]") {
  for (const ModelSpec& spec :
       {tiny_gpt(true), tiny_gpt(false), tiny_llama(true), tiny_llama(false)}) {
    const Gpt model = make_model<float>(spec);
    INFO(spec.name << " tied=" << spec.tied_embeddings);
    CHECK(model.num_params() == formula_params(spec));
    CHECK(static_cast<int64_t>(model.params().size()) == formula_params(spec));
  }
  // by hand for the tiny gpt: per layer 32+768+48+256+16+32+1024+64+1024+16 = 3280;
  // 2 * 3280 + 37*16 + 8*16 + 2*16 = 7312
  CHECK(formula_params(tiny_gpt(true)) == 7312);
}

TEST_CASE("the tensor table tiles the flat buffer in layer-major order", "[gpt][params]") {
  for (const ModelSpec& spec : {tiny_gpt(false), tiny_llama(false)}) {
    const Gpt model = make_model<float>(spec);
    int64_t next = 0, last_layer = -1;
    std::set<std::string> names;
    for (const TensorInfo& t : model.tensors()) {
      CHECK(t.offset == next);
      int64_t numel = 1;
      for (int64_t d : t.shape) numel *= d;
      CHECK(t.numel == numel);
      next += t.numel;
      if (t.layer >= 0) {
        CHECK(t.layer >= last_layer);  // a layer's tensors are contiguous
        last_layer = t.layer;
      }
      CHECK(names.insert(t.name).second);
    }
    CHECK(next == static_cast<int64_t>(model.params().size()));
  }
  const Gpt llama = make_model<float>(tiny_llama(false));
  const TensorInfo* k = llama.find("layers.1.attn.k.weight");
  REQUIRE(k != nullptr);
  CHECK(k->shape == std::vector<int64_t>{8, 16});  // (kv_heads * head_dim, hidden)
  CHECK(k->tp_split_dim == 0);
  CHECK(llama.find("layers.0.mlp.down.weight")->tp_split_dim == 1);
  CHECK(llama.find("pos_emb.weight") == nullptr);
  CHECK(llama.find("layers.0.attn.q.bias") == nullptr);
  CHECK(llama.rope_theta() == 10000.0);
  ModelSpec l3 = tiny_llama();
  l3.rope_theta = 500000.0;  // the model file says its base (Llama 3's); no guessing from names
  CHECK(make_model<float>(l3).rope_theta() == 500000.0);
}

TEST_CASE("init is GPT-2's: normal(0, 0.02), residual projections scaled", "[gpt][init]") {
  ModelSpec spec = tiny_gpt();
  spec.hidden = 64;  // enough samples for the standard deviation to be within a few %
  spec.ffn_hidden = 256;
  const Gpt model = make_model<float>(spec);
  const auto stddev = [&](const char* name) {
    const TensorInfo* t = model.find(name);
    double s = 0;
    for (int64_t i = 0; i < t->numel; i++) s += std::pow(model.params()[t->offset + i], 2);
    return std::sqrt(s / t->numel);
  };
  // 4096+ samples: the sample std is within ~1.1% (1 sigma) of the true one; 5% is > 4 sigma.
  CHECK(stddev("layers.0.attn.q.weight") == Approx(0.02).epsilon(0.05));
  CHECK(stddev("layers.0.mlp.proj.weight") == Approx(0.02 / 2.0).epsilon(0.05));  // 1/sqrt(2*2)
  CHECK(stddev("layers.1.norm1.weight") == 1.0);
  CHECK(stddev("layers.1.attn.o.bias") == 0.0);
  // same seed, same bits; another seed, other bits
  CHECK(make_model<float>(spec).params() == model.params());
  GptOptions other;
  other.seed = 7;
  CHECK(make_model<float>(spec, other).params() != model.params());
}

namespace {

// Whole-model finite differences in double (grad_check.hpp explains the step). The loss is a mean
// over B*T tokens and the gradients are small (1e-5 .. 1e-1), so the bound is absolute 1e-9 plus
// relative 1e-6: rounding of the loss (~3.6 * 2.2e-16 / 1e-5 ~ 1e-10) stays ten times below it.
void check_model_gradients(const ModelSpec& spec) {
  GptModel<double> model = make_model<double>(spec);
  const int64_t B = 2, T = spec.seq_len;
  const Batch b = make_batch(SyntheticStream{spec.vocab, 3, 0}, 0, B, T);
  FlopCounter flops;
  model.zero_grad();
  REQUIRE(model.forward(b.inputs.data(), b.targets.data(), B, T, flops).ok());
  REQUIRE(model.backward(flops).ok());
  const std::vector<double> analytic = model.grads();
  const double h = 1e-5;
  Rng rng(17);
  int64_t checked = 0;
  for (const TensorInfo& t : model.tensors()) {
    // first, last and 6 random elements of every tensor
    std::vector<int64_t> picks = {0, t.numel - 1};
    for (int i = 0; i < 6; i++) picks.push_back(static_cast<int64_t>(rng.next_u64() % t.numel));
    double worst = 0, worst_a = 0, worst_n = 0;
    int64_t worst_i = 0;
    for (int64_t i : picks) {
      double& w = model.params()[t.offset + i];
      const double orig = w;
      w = orig + h;
      const double lp = model.forward(b.inputs.data(), b.targets.data(), B, T, flops).value();
      w = orig - h;
      const double lm = model.forward(b.inputs.data(), b.targets.data(), B, T, flops).value();
      w = orig;
      const double numeric = (lp - lm) / (2 * h), a = analytic[t.offset + i];
      const double err = std::abs(a - numeric) / (1e-9 + 1e-6 * std::abs(numeric));
      if (!(err <= worst)) {
        worst = err;
        worst_a = a;
        worst_n = numeric;
        worst_i = i;
      }
      checked++;
    }
    INFO(spec.name << " " << t.name << "[" << worst_i << "]: analytic " << worst_a << " numeric "
                   << worst_n);
    CHECK(worst <= 1.0);
  }
  CHECK(checked == 8 * static_cast<int64_t>(model.tensors().size()));
}

}  // namespace

TEST_CASE("whole-model gradients match finite differences: gpt, tied", "[gpt][grad]") {
  check_model_gradients(tiny_gpt(true));
}

TEST_CASE("whole-model gradients match finite differences: llama, GQA, untied", "[gpt][grad]") {
  check_model_gradients(tiny_llama(false));
}

TEST_CASE("the fp32 model agrees with the same model run in double", "[gpt][grad]") {
  for (const ModelSpec& spec : {tiny_gpt(false), tiny_llama(true)}) {
    Gpt f = make_model<float>(spec);
    GptModel<double> d = make_model<double>(spec);
    for (size_t i = 0; i < f.params().size(); i++) d.params()[i] = f.params()[i];  // same weights
    const int64_t B = 2, T = spec.seq_len;
    const Batch b = make_batch(SyntheticStream{spec.vocab, 3, 0}, 0, B, T);
    FlopCounter flops;
    const float lf = f.forward(b.inputs.data(), b.targets.data(), B, T, flops).value();
    const double ld = d.forward(b.inputs.data(), b.targets.data(), B, T, flops).value();
    REQUIRE(f.backward(flops).ok());
    REQUIRE(d.backward(flops).ok());
    // fp32 rounding through ~10 ops of depth: relative 1e-5 on the loss; gradients compared as a
    // whole vector (small entries carry large relative rounding) to 1e-4 of its norm.
    CHECK(lf == Approx(ld).epsilon(1e-5));
    double diff = 0, norm = 0;
    for (size_t i = 0; i < f.grads().size(); i++) {
      diff += std::pow(f.grads()[i] - d.grads()[i], 2);
      norm += std::pow(d.grads()[i], 2);
    }
    CHECK(std::sqrt(diff) <= 1e-4 * std::sqrt(norm));
  }
}

TEST_CASE("gradients of two half batches with loss_scale 1/2 equal one full batch", "[gpt][grad]") {
  const ModelSpec spec = tiny_llama();
  GptModel<double> whole = make_model<double>(spec), halves = make_model<double>(spec);
  const int64_t T = spec.seq_len;
  const Batch b = make_batch(SyntheticStream{spec.vocab, 4, 0}, 0, 2, T);
  FlopCounter flops;
  whole.zero_grad();
  REQUIRE(whole.forward(b.inputs.data(), b.targets.data(), 2, T, flops).ok());
  REQUIRE(whole.backward(flops).ok());
  halves.zero_grad();
  for (int64_t half = 0; half < 2; half++) {
    REQUIRE(
        halves.forward(b.inputs.data() + half * T, b.targets.data() + half * T, 1, T, flops).ok());
    REQUIRE(halves.backward(flops, 0.5).ok());
  }
  for (size_t i = 0; i < whole.grads().size(); i++) {
    // double rounding only, different summation order: 1e-12 of a 1e-1-sized gradient or less
    CHECK(halves.grads()[i] == Approx(whole.grads()[i]).margin(1e-13).epsilon(1e-10));
  }
}

TEST_CASE("GEMM FLOP counter: one forward + backward of the tiny models, by hand", "[gpt][flops]") {
  const int64_t B = 2, T = 8;
  const Batch b = make_batch(SyntheticStream{37, 1, 0}, 0, B, T);
  SECTION("gpt: N = 16 tokens, h = 16, f = 64, V = 37, 2 layers") {
    Gpt model = make_model<float>(tiny_gpt());
    FlopCounter flops;
    REQUIRE(model.forward(b.inputs.data(), b.targets.data(), B, T, flops).ok());
    // per layer: q, k, v, o: 2*16*16*16 = 8192 each; fc, proj: 2*16*16*64 = 32768 each
    const int64_t layer = 4 * 8192 + 2 * 32768;       // 98304
    const int64_t logits = 2 * 16 * 16 * 37;          // 18944
    CHECK(flops.matmul_flops == 2 * layer + logits);  // 215552
    // attention per layer: 2 products * 2*B*heads*T*T*head_dim = 2 * 2*2*4*8*8*4 = 8192
    CHECK(flops.attention_flops == 2 * 8192);
    REQUIRE(model.backward(flops).ok());
    CHECK(flops.matmul_flops == 3 * (2 * layer + logits));  // backward = dinp + dweight
    CHECK(flops.attention_flops == 3 * 2 * 8192);
    // and the total is Narayanan et al.'s 72*B*s*l*h^2*(1 + s/(6h) + V/(12*l*h)), in integers:
    // 72*B*s*l*h^2 + 12*B*s^2*l*h + 6*B*s*h*V
    const int64_t s = T, l = 2, h = 16, V = 37;
    CHECK(flops.total_flops() ==
          72 * B * s * l * h * h + 12 * B * s * s * l * h + 6 * B * s * h * V);
  }
  SECTION("llama: kv dim 8, f = 32 (gate, up, down), untied head") {
    Gpt model = make_model<float>(tiny_llama());
    FlopCounter flops;
    REQUIRE(model.forward(b.inputs.data(), b.targets.data(), B, T, flops).ok());
    REQUIRE(model.backward(flops).ok());
    // per layer: q, o: 2*16*16*16 = 8192; k, v: 2*16*16*8 = 4096; gate, up, down: 2*16*16*32 =
    // 16384
    const int64_t layer = 2 * 8192 + 2 * 4096 + 3 * 16384;  // 73728
    const int64_t logits = 2 * 16 * 16 * 37;
    CHECK(flops.matmul_flops == 3 * (2 * layer + logits));  // 499200
    CHECK(flops.attention_flops == 3 * 2 * 8192);           // GQA does not change it
  }
}

TEST_CASE("training 30 AdamW steps on a repeating sequence lowers the loss", "[gpt][train]") {
  for (const ModelSpec& spec : {tiny_gpt(), tiny_llama()}) {
    const std::vector<float> losses = train(spec, 30);
    INFO(spec.name << ": first " << losses.front() << ", last " << losses.back());
    CHECK(losses.front() == Approx(std::log(37.0)).epsilon(0.05));  // near uniform at init
    CHECK(losses.back() < 0.5f * losses.front());
  }
}

TEST_CASE("two training runs give bit-identical losses", "[gpt][determinism]") {
  for (const ModelSpec& spec : {tiny_gpt(), tiny_llama()}) {
    const std::vector<float> a = train(spec, 10), b = train(spec, 10);
    REQUIRE(a.size() == b.size());
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("padding the vocabulary changes neither the loss nor the count", "[gpt][vocab]") {
  for (const ModelSpec& spec : {tiny_gpt(true), tiny_llama(false)}) {
    GptOptions padded;
    padded.padded_vocab = 48;
    Gpt a = make_model<float>(spec), p = make_model<float>(spec, padded);
    CHECK(p.num_params() == a.num_params());
    CHECK(p.padded_vocab() == 48);
    const Batch b = make_batch(SyntheticStream{spec.vocab, 2, 0}, 0, 2, 8);
    FlopCounter flops;
    // each logit is its own dot product and the padded ones are masked: the same bits
    CHECK(a.forward(b.inputs.data(), b.targets.data(), 2, 8, flops).value() ==
          p.forward(b.inputs.data(), b.targets.data(), 2, 8, flops).value());
    REQUIRE(p.backward(flops).ok());
    const TensorInfo* head = p.find(spec.tied_embeddings ? "tok_emb.weight" : "lm_head.weight");
    for (int64_t i = spec.vocab * spec.hidden; i < head->numel; i++) {
      CHECK(p.grads()[head->offset + i] == 0.0f);
    }
  }
}

TEST_CASE("bad inputs are errors, not crashes", "[gpt][errors]") {
  ModelSpec bad = tiny_llama();
  bad.kv_heads = 3;
  auto m = Gpt::create(bad);
  REQUIRE_FALSE(m.ok());
  CHECK(m.error().message == "model.kv_heads: must divide heads (got 3 and 4)");
  bad = tiny_gpt();
  bad.hidden = 0;
  CHECK_FALSE(Gpt::create(bad).ok());
  GptOptions small;
  small.padded_vocab = 10;
  CHECK_FALSE(Gpt::create(tiny_gpt(), small).ok());

  Gpt model = make_model<float>(tiny_gpt());
  FlopCounter flops;
  CHECK_FALSE(model.backward(flops).ok());  // no forward yet
  std::vector<int32_t> tokens(9, 1), targets(9, 1);
  CHECK_FALSE(model.forward(tokens.data(), targets.data(), 1, 9, flops).ok());  // T > seq_len
  targets[3] = 37;
  CHECK_FALSE(model.forward(tokens.data(), targets.data(), 1, 8, flops).ok());  // target >= vocab
}

TEST_CASE("the synthetic stream is seeded, random-access and shifted by one for targets",
          "[data]") {
  const SyntheticStream s{37, 9, 0};
  const Batch a = make_batch(s, 0, 3, 8), b = make_batch(s, 1, 2, 8);
  for (int64_t i = 0; i < 16; i++) {
    CHECK(a.inputs[8 + i] == b.inputs[i]);  // sequence 1 is the same wherever it is asked for
  }
  for (int64_t t = 0; t < 7; t++) CHECK(a.targets[t] == a.inputs[t + 1]);
  CHECK(a.targets[7] == a.inputs[8]);  // the stream continues into the next sequence
  std::set<int32_t> seen(a.inputs.begin(), a.inputs.end());
  CHECK(seen.size() > 10);  // 24 draws from 37: not constant
  for (int32_t tok : a.inputs) CHECK((tok >= 0 && tok < 37));
  const SyntheticStream rep{37, 9, 8};
  const Batch r = make_batch(rep, 0, 3, 8);
  for (int64_t i = 0; i < 16; i++) CHECK(r.inputs[i] == r.inputs[i + 8]);
}
