/* A job launcher off the interpreter: a thread that starts the next job of a slot the moment
 * the previous one ends, without the GIL. See launcher.py for what it is for and how the
 * runner uses it.
 *
 * The thread waits (poll) on the pidfd of each slot's running job and on a wake-up eventfd.
 * When a job ends it SIGKILLs what is left of its process group while the leader is still an
 * unreaped zombie (so the group id is still the job's), reaps it with wait4 for its status
 * and rusage, reads whether anything of it is left in its cgroup, then starts the slot's next queued job at once: vfork, then in the child
 * setsid, its directory, move into the job's cgroups by writing "0" to their open `tasks`/`cgroup.procs`
 * descriptors, its stdin/stdout/stderr, SIGPIPE and SIGXFSZ back to their defaults, an empty
 * signal mask, the jobs' limit on open files, then execve (and, if that fails, the fallback
 * command, as the Python spawner does). Each end, start and failed start is appended to a
 * list that Python reads after the notify eventfd becomes readable.
 *
 * A job that is not wholly in its cgroups (or has none) has its pid in the keeper's table
 * (`share_pids`: memory the keeper reads when it must kill the worker's jobs) while it runs,
 * at its slot's index, from its start until just before it is reaped: the keeper knows it
 * before Python has read its start, and at no cost to either while the worker lives.
 *
 * Python is woken at once when a slot of the lane has nothing running, fewer than
 * `notify_below` jobs queued, or a start failed; otherwise within `notify_delay` seconds of
 * the first event it has not taken. Woken for every job, a busy loop ran each wake-up on
 * caches the jobs had just used: handling several ends and starts per wake-up cost the run
 * less CPU a job.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

#define MAX_CGROUP_FDS 8

typedef struct Spec {
    struct Spec *next;
    long long token;
    char *path;           /* program */
    char **argv;          /* NULL-terminated */
    char *fallback_path;  /* NULL: none */
    char **fallback_argv;
    char **fallback_envp;
    char **envp;
    char *cwd;            /* NULL: the worker's own */
    char *procs;          /* a cgroup.procs to read once it has ended (NULL: none) */
    int fds[3];           /* stdin, stdout, stderr: owned, closed once started */
    int cgroup_fds[MAX_CGROUP_FDS];  /* not owned: the runner keeps them open */
    int n_cgroup_fds;
    int has_rlimit;
    struct rlimit rlimit_nofile;
    volatile int exec_errno;  /* written by the vfork child, read by the parent */
    volatile int chdir_failed;
    volatile int entered;  /* how many of its cgroups the child moved itself into */
    int contained_at;     /* entering this many cgroups contains it, else the table has its
                           * pid (-1: never put there) */
} Spec;

typedef struct {
    pid_t pid;            /* 0: nothing running */
    int pidfd;
    long long token;
    char *procs;          /* the running job's, taken from its Spec */
    Spec *head, *tail;    /* queued, in order */
    int touched;          /* a job of it ended or started since its lane last told Python */
    int in_table;         /* the running job's pid is in the keeper's table */
} Slot;

typedef struct {
    /* kind 'e' ended, 's' started, 'f' failed to start */
    char kind;
    char in_cwd;          /* 'f': the failure was entering the job's directory */
    signed char empty;    /* 'e': its cgroup.procs was empty (1), was not (0), unread (-1) */
    int entered;          /* 's': how many of its cgroups it entered itself */
    long long token;
    long long pid;
    int status;           /* 'e': the wait status; 'f': errno */
    double utime, stime;
    long maxrss_kib;
    double wall, monotonic;
} Event;

#define MAX_LANES 64

struct Launcher;

typedef struct {
    struct Launcher *owner;
    int index;
    pthread_t thread;
    int started;
    int wake_fd;
} Lane;

typedef struct Launcher {
    PyObject_HEAD
    pthread_mutex_t lock;
    Lane lanes[MAX_LANES];
    int n_lanes;
    int closing;
    int notify_fd;
    int unread;    /* events Python has not taken */
    int notified;  /* the notify eventfd is readable */
    double unread_since;  /* CLOCK_MONOTONIC of the first event Python has not taken */
    int notify_below;     /* see the top of this file */
    double notify_delay;
    Slot *slots;
    Py_ssize_t n_slots;
    Event *events;
    Py_ssize_t n_events, cap_events;
    int32_t *pids;        /* the keeper's table (NULL: none), one entry a slot */
    Py_ssize_t n_pids;
} Launcher;

static double clock_seconds(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void free_strings(char **strings) {
    if (strings == NULL) return;
    for (char **s = strings; *s != NULL; s++) PyMem_RawFree(*s);
    PyMem_RawFree(strings);
}

static void free_spec(Spec *spec) {
    if (spec == NULL) return;
    for (int i = 0; i < 3; i++)
        if (spec->fds[i] >= 0) close(spec->fds[i]);
    PyMem_RawFree(spec->path);
    PyMem_RawFree(spec->fallback_path);
    PyMem_RawFree(spec->cwd);
    PyMem_RawFree(spec->procs);
    free_strings(spec->argv);
    free_strings(spec->fallback_argv);
    free_strings(spec->fallback_envp);
    free_strings(spec->envp);
    PyMem_RawFree(spec);
}

/* Called with the lock held. */
static int push_event(Launcher *self, Event event) {
    if (self->n_events == self->cap_events) {
        Py_ssize_t cap = self->cap_events ? self->cap_events * 2 : 64;
        Event *grown = PyMem_RawRealloc(self->events, (size_t)cap * sizeof(Event));
        if (grown == NULL) return -1;
        self->events = grown;
        self->cap_events = cap;
    }
    self->events[self->n_events++] = event;
    if (!self->unread) self->unread_since = clock_seconds(CLOCK_MONOTONIC);
    self->unread = 1;
    return 0;
}

/* Called with the lock held. */
static void notify(Launcher *self) {
    if (!self->unread || self->notified) return;  /* Python is woken already */
    self->notified = 1;
    uint64_t one = 1;
    ssize_t written = write(self->notify_fd, &one, sizeof one);
    (void)written;  /* full only if already readable */
}

/* In the vfork child: only system calls, then exec or _exit. Its signal handlers are its own
 * (vfork shares memory, not handlers); its memory is the worker's, so it writes only to
 * `spec`, which the worker reads once the child has exec'd or exited. */
static void __attribute__((noinline)) child(Spec *spec) {
    sigset_t none;
    int source[3];
    if (setsid() < 0) goto fail;
    if (spec->cwd != NULL && chdir(spec->cwd) < 0) {
        spec->chdir_failed = 1;
        goto fail;
    }
    /* A cgroup it cannot enter is left to the runner, which moves it in afterwards. */
    for (int i = 0; i < spec->n_cgroup_fds; i++)
        if (write(spec->cgroup_fds[i], "0", 1) == 1) spec->entered++;
    /* Above 2 first, so that no dup2 overwrites another's source, and each target is a
     * new descriptor (without close-on-exec). */
    for (int target = 0; target < 3; target++) {
        source[target] = spec->fds[target] > 2 ? spec->fds[target]
                                               : fcntl(spec->fds[target], F_DUPFD_CLOEXEC, 3);
        if (source[target] < 0) goto fail;
    }
    for (int target = 0; target < 3; target++)
        if (dup2(source[target], target) < 0) goto fail;
    /* No handler of the worker's may run here before the exec: caught signals back to their
     * defaults (the exec would do it), and SIGPIPE and SIGXFSZ, which Python ignores. */
    for (int number = 1; number < NSIG; number++) {
        struct sigaction action;
        if (sigaction(number, NULL, &action) == 0 && action.sa_handler != SIG_DFL
                && (action.sa_handler != SIG_IGN || number == SIGPIPE || number == SIGXFSZ))
            signal(number, SIG_DFL);
    }
    if (spec->has_rlimit) setrlimit(RLIMIT_NOFILE, &spec->rlimit_nofile);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(spec->path, spec->argv, spec->envp);
    if (spec->fallback_path != NULL)
        execve(spec->fallback_path, spec->fallback_argv, spec->fallback_envp);
fail:
    spec->exec_errno = errno ? errno : ENOEXEC;
    _exit(127);
}

/* Start `spec`; its pid, or -errno. Runs on a lane's thread, without the lock; the thread
 * blocks every signal from its birth, so no handler runs in the child before it resets them. */
static pid_t start(Spec *spec) {
    spec->exec_errno = 0;
    spec->chdir_failed = 0;
    spec->entered = 0;
    pid_t pid = vfork();
    if (pid == 0) child(spec);
    if (pid < 0) return -errno;
    if (spec->exec_errno != 0) {  /* the child has exited already: reap it */
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        return -spec->exec_errno;
    }
    return pid;
}

/* Whether nothing is left in a cgroup: 1, 0, or -1 if it cannot be read. Opened anew each
 * time: under v1 an open cgroup.procs keeps the list it first read. */
static int cgroup_empty(const char *procs) {
    int fd = open(procs, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    char byte;
    ssize_t got = read(fd, &byte, 1);
    close(fd);
    return got < 0 ? -1 : got == 0;
}

/* Reap the slot's job if it has ended; 1 if it had. Called with the lock held (released
 * while its cgroup is read). */
static int reap(Launcher *self, Slot *slot) {
    int status;
    struct rusage usage;
    kill(-slot->pid, SIGKILL);  /* leftovers; the zombie keeps the group id the job's */
    int32_t *entry = slot->in_table ? &self->pids[slot - self->slots] : NULL;
    /* Out of the keeper's table before it is reaped: a reaped pid may be another's. */
    if (entry != NULL) __atomic_store_n(entry, 0, __ATOMIC_RELEASE);
    pid_t got = wait4(slot->pid, &status, WNOHANG, &usage);
    if (got == 0) {
        if (entry != NULL) __atomic_store_n(entry, (int32_t)slot->pid, __ATOMIC_RELEASE);
        return 0;
    }
    slot->in_table = 0;
    Event event = {.kind = 'e', .token = slot->token, .pid = slot->pid, .empty = -1,
                   .wall = clock_seconds(CLOCK_REALTIME),
                   .monotonic = clock_seconds(CLOCK_MONOTONIC)};
    if (got < 0) {  /* reaped elsewhere: the status is lost */
        event.status = -1;
    } else {
        event.status = status;
        event.utime = (double)usage.ru_utime.tv_sec + usage.ru_utime.tv_usec * 1e-6;
        event.stime = (double)usage.ru_stime.tv_sec + usage.ru_stime.tv_usec * 1e-6;
        event.maxrss_kib = usage.ru_maxrss;
    }
    close(slot->pidfd);
    slot->pid = 0;
    slot->pidfd = -1;
    slot->touched = 1;
    char *procs = slot->procs;
    slot->procs = NULL;
    if (procs != NULL) {  /* whether anything outlived the group's kill; a read may wait */
        pthread_mutex_unlock(&self->lock);
        event.empty = (signed char)cgroup_empty(procs);
        PyMem_RawFree(procs);
        pthread_mutex_lock(&self->lock);
    }
    push_event(self, event);
    return 1;
}

/* Start slot `i`'s next queued job. Called with the lock held; releases it around the
 * start. */
static void start_next(Launcher *self, Py_ssize_t i) {
    Slot *slot = &self->slots[i];
    Spec *spec = slot->head;
    slot->head = spec->next;
    if (slot->head == NULL) slot->tail = NULL;
    slot->pid = -1;  /* starting: not idle, and not yet a process to watch */
    int32_t *entry = self->pids != NULL && i < self->n_pids ? &self->pids[i] : NULL;
    pthread_mutex_unlock(&self->lock);
    double wall = clock_seconds(CLOCK_REALTIME), monotonic = clock_seconds(CLOCK_MONOTONIC);
    pid_t pid = start(spec);
    int pidfd = pid > 0 ? (int)syscall(SYS_pidfd_open, pid, 0) : -1;
    int pidfd_errno = errno;
    if (pid > 0 && pidfd < 0) {  /* cannot be watched: end it */
        kill(-pid, SIGKILL);
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    }
    int in_table = entry != NULL && pid > 0 && pidfd >= 0 && spec->contained_at >= 0
                   && spec->entered < spec->contained_at;
    if (in_table) __atomic_store_n(entry, (int32_t)pid, __ATOMIC_RELEASE);
    pthread_mutex_lock(&self->lock);
    slot = &self->slots[i];  /* the array may have grown meanwhile */
    slot->touched = 1;
    Event event = {.kind = 's', .token = spec->token, .pid = pid, .wall = wall,
                   .monotonic = monotonic, .entered = spec->entered};
    if (pid > 0 && pidfd >= 0) {
        slot->pid = pid;
        slot->pidfd = pidfd;
        slot->in_table = in_table;
        slot->token = spec->token;
        slot->procs = spec->procs;
        spec->procs = NULL;
    } else {
        slot->pid = 0;
        event.kind = 'f';
        event.in_cwd = (char)spec->chdir_failed;
        event.status = pid < 0 ? (int)-pid : pidfd_errno;
        event.pid = 0;
    }
    push_event(self, event);
    free_spec(spec);
}

/* Start the next job of every idle slot of this lane that has one queued (after a failed
 * start, the one after it). Called with the lock held. Returns whether any was tried. */
static int start_queued(Launcher *self, int lane) {
    int added = 0;
    for (Py_ssize_t i = lane; i < self->n_slots; i += self->n_lanes) {
        while (self->slots[i].pid == 0 && self->slots[i].head != NULL && !self->closing) {
            start_next(self, i);
            added = 1;
        }
    }
    return added;
}

/* Whether Python must be told now of what this lane has seen (see the top of this file):
 * judged on the slots where a job ended or started, not on the lane's others (an unused
 * slot, or one running a long job with nothing behind it, must not make every event urgent).
 * Called with the lock held. */
static int urgent(Launcher *self, int lane) {
    int now = self->notify_below <= 0;
    for (Py_ssize_t i = lane; i < self->n_slots; i += self->n_lanes) {
        Slot *slot = &self->slots[i];
        if (!slot->touched) continue;
        slot->touched = 0;
        if (now) continue;
        int queued = 0;
        for (Spec *spec = slot->head; spec != NULL && queued < self->notify_below;
             spec = spec->next)
            queued++;
        if (slot->pid == 0 || queued < self->notify_below) now = 1;
    }
    if (now) return 1;
    for (Py_ssize_t k = 0; k < self->n_events; k++)
        if (self->events[k].kind == 'f') return 1;
    return 0;
}

/* poll's timeout: until the unread events are due to Python (-1: none waits). Called with
 * the lock held. */
static int notify_timeout_ms(Launcher *self) {
    if (!self->unread || self->notified) return -1;
    double left = self->unread_since + self->notify_delay - clock_seconds(CLOCK_MONOTONIC);
    return left <= 0 ? 0 : (int)(left * 1000.0) + 1;
}

static void *run(void *arg) {
    Lane *lane = arg;
    Launcher *self = lane->owner;
    struct pollfd *polled = NULL;
    Py_ssize_t *slot_of = NULL;
    Py_ssize_t capacity = 0;
    pthread_mutex_lock(&self->lock);
    int ended = 0;
    for (;;) {
        /* The next jobs start before Python is told of the ends: it would compete for the
         * CPU with their start. */
        int added = start_queued(self, lane->index);
        if ((added || ended) && urgent(self, lane->index)) notify(self);
        if (notify_timeout_ms(self) == 0) notify(self);
        if (self->closing) break;
        while (capacity < self->n_slots + 1) {
            struct pollfd *more_polled = PyMem_RawRealloc(
                polled, (size_t)(self->n_slots + 1) * sizeof *polled);
            if (more_polled != NULL) polled = more_polled;
            Py_ssize_t *more_slots = PyMem_RawRealloc(
                slot_of, (size_t)(self->n_slots + 1) * sizeof *slot_of);
            if (more_slots != NULL) slot_of = more_slots;
            if (more_polled != NULL && more_slots != NULL) {
                capacity = self->n_slots + 1;
            } else {  /* out of memory: try again shortly, the running jobs keep running */
                pthread_mutex_unlock(&self->lock);
                usleep(10000);
                pthread_mutex_lock(&self->lock);
            }
        }
        nfds_t n = 0;
        polled[n++] = (struct pollfd){.fd = lane->wake_fd, .events = POLLIN};
        for (Py_ssize_t i = lane->index; i < self->n_slots; i += self->n_lanes) {
            if (self->slots[i].pid > 0) {
                slot_of[n] = i;
                polled[n++] = (struct pollfd){.fd = self->slots[i].pidfd, .events = POLLIN};
            }
        }
        int timeout = notify_timeout_ms(self);
        pthread_mutex_unlock(&self->lock);
        int ready = poll(polled, n, timeout);
        pthread_mutex_lock(&self->lock);
        if (ready < 0) continue;  /* EINTR */
        if (polled[0].revents) {
            uint64_t count;
            ssize_t got = read(lane->wake_fd, &count, sizeof count);
            (void)got;
        }
        ended = 0;
        for (nfds_t k = 1; k < n; k++) {
            Slot *slot = &self->slots[slot_of[k]];
            if (polled[k].revents && slot->pid > 0 && slot->pidfd == polled[k].fd)
                ended |= reap(self, slot);
        }
    }
    pthread_mutex_unlock(&self->lock);
    PyMem_RawFree(polled);
    PyMem_RawFree(slot_of);
    return NULL;
}

static void wake(Lane *lane) {
    uint64_t one = 1;
    ssize_t written = write(lane->wake_fd, &one, sizeof one);
    (void)written;
}

/* ---- Python interface ------------------------------------------------------------------ */


/* Launcher(lanes, notify_below=0, notify_delay=0.0): `lanes` threads (1..64); slot i is
 * started and watched by lane i % lanes, so a start (whose vfork holds its thread until the
 * child has exec'd) delays no other lane. `notify_below` 0: Python is told of every event at
 * once. */
static PyObject *Launcher_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"lanes", "notify_below", "notify_delay", NULL};
    int lanes, notify_below = 0;
    double notify_delay = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "i|id", keywords, &lanes, &notify_below,
                                     &notify_delay))
        return NULL;
    if (lanes < 1 || lanes > MAX_LANES) {
        PyErr_Format(PyExc_ValueError, "lanes must be 1..%d", MAX_LANES);
        return NULL;
    }
    if (notify_below < 0 || !(notify_delay >= 0.0 && notify_delay <= 1.0)) {
        PyErr_SetString(PyExc_ValueError, "notify_below >= 0 and 0 <= notify_delay <= 1");
        return NULL;
    }
    Launcher *self = (Launcher *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->notify_fd = -1;
    self->n_lanes = lanes;
    self->notify_below = notify_below;
    self->notify_delay = notify_delay;
    pthread_mutex_init(&self->lock, NULL);
    int failed = 0;
    for (int i = 0; i < lanes; i++) {
        self->lanes[i] = (Lane){.owner = self, .index = i,
                                .wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
        failed |= self->lanes[i].wake_fd < 0;
    }
    self->notify_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (failed || self->notify_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void stop_threads(Launcher *self) {
    pthread_mutex_lock(&self->lock);
    self->closing = 1;
    pthread_mutex_unlock(&self->lock);
    for (int i = 0; i < self->n_lanes; i++) {
        Lane *lane = &self->lanes[i];
        if (!lane->started) continue;
        wake(lane);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(lane->thread, NULL);
        Py_END_ALLOW_THREADS
        lane->started = 0;
    }
}

static void Launcher_dealloc(Launcher *self) {
    stop_threads(self);
    for (Py_ssize_t i = 0; i < self->n_slots; i++) {
        Spec *spec = self->slots[i].head;
        while (spec != NULL) {
            Spec *next = spec->next;
            free_spec(spec);
            spec = next;
        }
        if (self->slots[i].pidfd >= 0) close(self->slots[i].pidfd);
        PyMem_RawFree(self->slots[i].procs);
    }
    PyMem_RawFree(self->slots);
    PyMem_RawFree(self->events);
    if (self->pids != NULL) munmap(self->pids, (size_t)self->n_pids * sizeof(int32_t));
    for (int i = 0; i < self->n_lanes; i++)
        if (self->lanes[i].wake_fd >= 0) close(self->lanes[i].wake_fd);
    if (self->notify_fd >= 0) close(self->notify_fd);
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static char *copy_bytes(PyObject *object) {
    char *data;
    Py_ssize_t size;
    if (PyBytes_AsStringAndSize(object, &data, &size) < 0) return NULL;
    if ((Py_ssize_t)strlen(data) != size) {
        PyErr_SetString(PyExc_ValueError, "embedded null byte");
        return NULL;
    }
    char *copy = PyMem_RawMalloc((size_t)size + 1);
    if (copy == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(copy, data, (size_t)size + 1);
    return copy;
}

static char **copy_list(PyObject *sequence) {
    PyObject *fast = PySequence_Fast(sequence, "a sequence of bytes is needed");
    if (fast == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    char **strings = PyMem_RawCalloc((size_t)n + 1, sizeof(char *));
    if (strings == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        strings[i] = copy_bytes(PySequence_Fast_GET_ITEM(fast, i));
        if (strings[i] == NULL) {
            Py_DECREF(fast);
            free_strings(strings);
            return NULL;
        }
    }
    Py_DECREF(fast);
    return strings;
}

/* queue(slot, token, path, argv, envp, fds, cgroup_fds, fallback=None, rlimit=None,
 *       cwd=None, procs=None, contained_at=-1)
 * fallback: (path, argv, envp) exec'd if the first exec fails.
 * contained_at: started having entered fewer cgroups than this, the job's pid goes in the
 * keeper's table (-1: never).
 * Once its arguments are parsed it owns the three fds (closed once the job has started or
 * failed to, or is withdrawn), even when it raises after that. */
static PyObject *Launcher_queue(Launcher *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"slot", "token", "path", "argv", "envp", "fds", "cgroup_fds",
                               "fallback", "rlimit", "cwd", "procs", "contained_at", NULL};
    Py_ssize_t slot_index;
    long long token;
    PyObject *path, *argv, *envp, *cgroup_fds, *fallback = Py_None, *rlimit = Py_None,
             *cwd = Py_None, *procs = Py_None;
    int fds[3], contained_at = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "nLOOO(iii)O|OOOOi", keywords, &slot_index,
                                     &token, &path, &argv, &envp, &fds[0], &fds[1], &fds[2],
                                     &cgroup_fds, &fallback, &rlimit, &cwd, &procs,
                                     &contained_at))
        return NULL;
    Spec *spec = PyMem_RawCalloc(1, sizeof(Spec));
    if (spec == NULL) {
        for (int i = 0; i < 3; i++) close(fds[i]);
        return PyErr_NoMemory();
    }
    memcpy(spec->fds, fds, sizeof fds);
    spec->token = token;
    spec->contained_at = contained_at;
    if (slot_index < 0) {
        PyErr_SetString(PyExc_ValueError, "slot must be >= 0");
        goto error;
    }
    if ((spec->path = copy_bytes(path)) == NULL || (spec->argv = copy_list(argv)) == NULL
            || (spec->envp = copy_list(envp)) == NULL)
        goto error;
    if (cwd != Py_None && (spec->cwd = copy_bytes(cwd)) == NULL) goto error;
    if (procs != Py_None && (spec->procs = copy_bytes(procs)) == NULL) goto error;
    if (fallback != Py_None) {
        PyObject *fallback_path, *fallback_argv, *fallback_envp;
        if (!PyArg_ParseTuple(fallback, "OOO", &fallback_path, &fallback_argv, &fallback_envp))
            goto error;
        if ((spec->fallback_path = copy_bytes(fallback_path)) == NULL
                || (spec->fallback_argv = copy_list(fallback_argv)) == NULL
                || (spec->fallback_envp = copy_list(fallback_envp)) == NULL)
            goto error;
    }
    if (rlimit != Py_None) {
        long long soft, hard;
        if (!PyArg_ParseTuple(rlimit, "LL", &soft, &hard)) goto error;
        spec->has_rlimit = 1;
        spec->rlimit_nofile.rlim_cur = (rlim_t)soft;
        spec->rlimit_nofile.rlim_max = (rlim_t)hard;
    }
    PyObject *fast = PySequence_Fast(cgroup_fds, "cgroup_fds must be a sequence");
    if (fast == NULL) goto error;
    if (PySequence_Fast_GET_SIZE(fast) > MAX_CGROUP_FDS) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "too many cgroup descriptors");
        goto error;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
        int fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (fd == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            goto error;
        }
        spec->cgroup_fds[spec->n_cgroup_fds++] = fd;
    }
    Py_DECREF(fast);

    enum { QUEUED, NO_MEMORY, NO_THREAD } outcome = QUEUED;
    int idle = 0;
    Lane *lane = &self->lanes[slot_index % self->n_lanes];
    /* The lock is never held while the GIL is awaited: a lane waiting for it would stall. */
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->lock);
    if (slot_index >= self->n_slots) {
        Py_ssize_t n = slot_index + 1;
        Slot *grown = PyMem_RawRealloc(self->slots, (size_t)n * sizeof(Slot));
        if (grown == NULL) {
            outcome = NO_MEMORY;
        } else {
            for (Py_ssize_t i = self->n_slots; i < n; i++)
                grown[i] = (Slot){.pid = 0, .pidfd = -1};
            self->slots = grown;
            self->n_slots = n;
        }
    }
    if (outcome == QUEUED && !lane->started) {
        /* Born with every signal blocked (it inherits this thread's mask): signals are the
         * interpreter's business, and a start's child must run no handler. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        if (self->closing || pthread_create(&lane->thread, NULL, run, lane) != 0)
            outcome = NO_THREAD;
        else
            lane->started = 1;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (outcome == QUEUED) {
        Slot *slot = &self->slots[slot_index];
        if (slot->tail) slot->tail->next = spec;
        else slot->head = spec;
        slot->tail = spec;
        /* A slot with a job running starts this one when that job ends, unwoken. */
        idle = slot->pid == 0;
    }
    pthread_mutex_unlock(&self->lock);
    if (idle) wake(lane);
    Py_END_ALLOW_THREADS
    if (outcome == NO_MEMORY) {
        PyErr_NoMemory();
        goto error;
    }
    if (outcome == NO_THREAD) {
        PyErr_SetString(PyExc_OSError, "cannot start the launcher's thread");
        goto error;
    }
    Py_RETURN_NONE;
error:
    free_spec(spec);
    return NULL;
}

/* share_pids(fd, count): map the keeper's table, `count` 32-bit entries of file `fd`, once,
 * before the first job is queued. */
static PyObject *Launcher_share_pids(Launcher *self, PyObject *args) {
    int fd;
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "in", &fd, &count)) return NULL;
    if (self->pids != NULL || self->n_slots > 0 || count <= 0) {
        PyErr_SetString(PyExc_ValueError, "the table is shared once, before any job");
        return NULL;
    }
    struct stat file;
    if (fstat(fd, &file) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    if (file.st_size < (off_t)((size_t)count * sizeof(int32_t))) {  /* else SIGBUS */
        PyErr_SetString(PyExc_ValueError, "the table's file is shorter than its entries");
        return NULL;
    }
    void *mapped = mmap(NULL, (size_t)count * sizeof(int32_t), PROT_READ | PROT_WRITE,
                        MAP_SHARED, fd, 0);
    if (mapped == MAP_FAILED) return PyErr_SetFromErrno(PyExc_OSError);
    self->pids = mapped;
    self->n_pids = count;
    Py_RETURN_NONE;
}

/* withdraw(token) -> bool: True if it was still queued (it will never start). */
static PyObject *Launcher_withdraw(Launcher *self, PyObject *arg) {
    long long token = PyLong_AsLongLong(arg);
    if (token == -1 && PyErr_Occurred()) return NULL;
    Spec *found = NULL;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->lock);
    for (Py_ssize_t i = 0; i < self->n_slots && found == NULL; i++) {
        Slot *slot = &self->slots[i];
        Spec *previous = NULL;
        for (Spec *spec = slot->head; spec != NULL; previous = spec, spec = spec->next) {
            if (spec->token != token) continue;
            if (previous) previous->next = spec->next;
            else slot->head = spec->next;
            if (slot->tail == spec) slot->tail = previous;
            found = spec;
            break;
        }
    }
    pthread_mutex_unlock(&self->lock);
    free_spec(found);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(found != NULL);
}

/* signal(token, signal_number) -> bool: signal the job's process group if it is running and
 * not yet reaped (its group id cannot have been reused). */
static PyObject *Launcher_signal(Launcher *self, PyObject *args) {
    long long token;
    int signal_number;
    if (!PyArg_ParseTuple(args, "Li", &token, &signal_number)) return NULL;
    int sent = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->lock);
    for (Py_ssize_t i = 0; i < self->n_slots; i++) {
        Slot *slot = &self->slots[i];
        if (slot->pid > 0 && slot->token == token) {
            sent = kill(-slot->pid, signal_number) == 0;
            break;
        }
    }
    pthread_mutex_unlock(&self->lock);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(sent);
}

/* events() -> list of (kind, token, pid, status, utime, stime, maxrss_kib, wall, monotonic,
 * in_cwd, empty, entered) */
static PyObject *Launcher_events(Launcher *self, PyObject *Py_UNUSED(ignored)) {
    uint64_t count;
    ssize_t got = read(self->notify_fd, &count, sizeof count);
    (void)got;
    Event *events;
    Py_ssize_t n;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->lock);
    events = self->events;
    n = self->n_events;
    self->events = NULL;
    self->n_events = self->cap_events = 0;
    self->unread = self->notified = 0;
    pthread_mutex_unlock(&self->lock);
    Py_END_ALLOW_THREADS
    PyObject *list = PyList_New(n);
    for (Py_ssize_t i = 0; list != NULL && i < n; i++) {
        Event *e = &events[i];
        PyObject *item = Py_BuildValue("(CLLiddlddOii)", e->kind, e->token, e->pid,
                                       e->status, e->utime, e->stime, e->maxrss_kib, e->wall,
                                       e->monotonic, e->in_cwd ? Py_True : Py_False,
                                       (int)e->empty, e->entered);
        if (item == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, item);
    }
    PyMem_RawFree(events);
    return list;
}

static PyObject *Launcher_fileno(Launcher *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(self->notify_fd);
}

/* close(): stop the threads; what is queued is dropped (withdraw it first to report it).
 * Jobs still running are neither killed nor reaped: the runner drains them first. */
static PyObject *Launcher_close(Launcher *self, PyObject *Py_UNUSED(ignored)) {
    stop_threads(self);
    Py_RETURN_NONE;
}

static PyMethodDef Launcher_methods[] = {
    {"queue", (PyCFunction)(void (*)(void))Launcher_queue, METH_VARARGS | METH_KEYWORDS,
     "Queue a job to start on `slot` once its running job (if any) has ended."},
    {"share_pids", (PyCFunction)Launcher_share_pids, METH_VARARGS,
     "Keep the pids of running jobs not wholly in cgroups in the keeper's table."},
    {"withdraw", (PyCFunction)Launcher_withdraw, METH_O,
     "Take a queued job back; False if it has started (or is starting)."},
    {"signal", (PyCFunction)Launcher_signal, METH_VARARGS,
     "Signal a running job's process group; False if it is not running."},
    {"events", (PyCFunction)Launcher_events, METH_NOARGS, "The ends and starts since last."},
    {"fileno", (PyCFunction)Launcher_fileno, METH_NOARGS, "Readable when there are events."},
    {"close", (PyCFunction)Launcher_close, METH_NOARGS, "Stop the launcher's thread."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LauncherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal.worker._launcher.Launcher",
    .tp_basicsize = sizeof(Launcher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Launcher_new,
    .tp_dealloc = (destructor)Launcher_dealloc,
    .tp_methods = Launcher_methods,
    .tp_doc = "Starts each slot's next job the moment its previous one ends.",
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_launcher", "A job launcher off the interpreter.", -1, NULL,
};

PyMODINIT_FUNC PyInit__launcher(void) {
    if (PyType_Ready(&LauncherType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&LauncherType);
    if (PyModule_AddObject(m, "Launcher", (PyObject *)&LauncherType) < 0) {
        Py_DECREF(&LauncherType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
