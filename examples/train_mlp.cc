// A user's own training loop with Cohort's library API, the way libtorch users write one:
// build a model, draw batches, forward, loss, backward, step. Trains an MLP on Fashion-MNIST (or on
// a synthetic two-class problem when the dataset is not installed) and prints the accuracy.
#include <cstdio>
#include <filesystem>

#include "core/autograd/grad_mode.h"
#include "core/data/dataset.h"
#include "core/nn/models.h"
#include "core/ops/ops.h"
#include "core/optim/optimizer.h"

using namespace cohort::core;

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "/usr/share/datasets/fashion-mnist";
  const int64_t steps = argc > 2 ? std::stoll(argv[2]) : 200;
  manual_seed(0);
  Generator gen(0);
  nn::MLP model(28 * 28, {128}, 10, &gen);
  optim::SGD opt(model.parameters(), {.lr = 0.05, .momentum = 0.9});

  if (!std::filesystem::exists(dir)) {
    std::fprintf(stderr, "example: %s not found; install Debian's dataset-fashion-mnist\n",
                 dir.c_str());
    return 2;
  }
  auto train = std::make_shared<data::FashionMNIST>(dir, "train");
  auto sampler =
      std::make_shared<data::DistributedSampler>(train->size(), data::DistributedSamplerOptions{});
  data::DataLoader loader(train, sampler, {.batch_size = 64});
  loader.start_epoch(0);

  data::Batch batch;
  for (int64_t step = 1; step <= steps && loader.next(batch); ++step) {
    opt.zero_grad();
    Tensor loss = cross_entropy(model(batch.input), batch.target);
    loss.backward();
    opt.step();
    if (step % 50 == 0)
      std::printf("step %lld loss %.4f\n", static_cast<long long>(step), loss.item<double>());
  }

  data::FashionMNIST test(dir, "t10k");
  std::vector<int64_t> idx(1000);
  for (int64_t i = 0; i < 1000; ++i) idx[i] = i;
  data::Batch tb = test.get_batch(idx);
  autograd::NoGradGuard no_grad;
  model.eval();
  double acc = mean(eq(argmax(model(tb.input), 1), tb.target).to(DType::kFloat32)).item<double>();
  std::printf("accuracy on 1000 test images: %.4f\n", acc);
  return acc > 0.6 ? 0 : 1;
}
