// serving/scheduler.cpp: the bounded queue and its workers (see serving/scheduler.h).
#include "serving/scheduler.h"

Scheduler::Scheduler(int n_workers, int capacity) : capacity_(capacity) {
    try {
        for (int i = 0; i < n_workers; i++) workers_.emplace_back([this] { work(); });
    } catch (const std::system_error &) {
        started_ = false;
        shutdown();   // the workers already running end
    }
}

Scheduler::~Scheduler() { shutdown(); }

bool Scheduler::submit(std::function<void()> task) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_ || (int)queue_.size() >= capacity_) return false;
        queue_.push_back(std::move(task));
    }
    wake_.notify_one();
    return true;
}

void Scheduler::set_paused(bool paused) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        paused_ = paused;
    }
    wake_.notify_all();
}

void Scheduler::shutdown() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
        paused_ = false;
    }
    wake_.notify_all();
    for (std::thread &t : workers_)
        if (t.joinable()) t.join();
}

int Scheduler::waiting() {
    std::lock_guard<std::mutex> lock(mutex_);
    return (int)queue_.size();
}

// Takes tasks until shutdown leaves the queue empty.
void Scheduler::work() {
    for (;;) {
        std::function<void()> task;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            wake_.wait(lock, [this] { return (!paused_ && !queue_.empty()) || (stopping_ && queue_.empty()); });
            if (queue_.empty()) return;
            task = std::move(queue_.front());
            queue_.pop_front();
        }
        task();
    }
}
