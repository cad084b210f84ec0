// A thread that runs posted tasks one at a time, in order; each post returns a future that holds
// the task's exception, if any. The worker's connection to each server runs its calls on one.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

namespace cohort::ps {

class TaskThread {
 public:
  TaskThread() : thread_([this] { loop(); }) {}
  // Runs what is queued, then joins.
  ~TaskThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  TaskThread(const TaskThread&) = delete;
  TaskThread& operator=(const TaskThread&) = delete;

  std::future<void> post(std::function<void()> task) {
    auto p = std::make_shared<std::packaged_task<void()>>(std::move(task));
    auto f = p->get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back([p] { (*p)(); });
    }
    cv_.notify_all();
    return f;
  }

 private:
  void loop() {
    while (true) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::thread thread_;  // last: started once the rest exists
};

}  // namespace cohort::ps
