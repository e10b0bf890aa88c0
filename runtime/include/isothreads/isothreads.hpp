// isothreads: migratable user-level threads over MPI. The one header a program includes.
#pragma once

#include "isothreads/checkpoint.hpp"
#include "isothreads/collectives.hpp"
#include "isothreads/error.hpp"
#include "isothreads/future.hpp"
#include "isothreads/group.hpp"
#include "isothreads/isomalloc.h"
#include "isothreads/lb.hpp"
#include "isothreads/messaging.hpp"
#include "isothreads/runtime.hpp"
#include "isothreads/runtime_options.hpp"
#include "isothreads/stealing.hpp"
#include "isothreads/sync.hpp"
#include "isothreads/thread.hpp"
#include "isothreads/thread_id.hpp"
#include "isothreads/trace.hpp"
