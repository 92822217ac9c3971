// serving/scheduler.h: a bounded queue of requests and a fixed number of
// worker threads that run them, one request per worker at a time. A request
// that finds the queue full is refused at once (the server answers 429 with
// Retry-After) rather than waiting without bound.
#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

class Scheduler {
public:
    // n_workers threads; at most capacity tasks wait for a free worker.
    Scheduler(int n_workers, int capacity);
    ~Scheduler();
    // Whether every worker thread started (else none runs and submit refuses all).
    bool started() const { return started_; }
    // Queues task; false when the queue is full or the scheduler is shutting down.
    bool submit(std::function<void()> task);
    // Workers take no new task while paused (the tests fill the queue with it).
    void set_paused(bool paused);
    // Refuses new tasks, runs those already queued, and joins the workers.
    void shutdown();
    int waiting();

private:
    void work();
    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<std::function<void()>> queue_;
    std::vector<std::thread> workers_;
    int capacity_;
    bool paused_ = false, stopping_ = false, started_ = true;
};
