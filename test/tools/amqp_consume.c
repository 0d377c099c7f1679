/*
 * amqp_consume.c
 *		A RabbitMQ consumer for eventstore's tests, benchmarks and demo:
 *		declares a durable topic exchange and a durable queue bound to it,
 *		then prints what arrives, one JSON object a line.
 *
 *	amqp_consume --port P --exchange X --queue Q [--bind KEY]... [--setup-only]
 *		[--count N] [--timeout SECONDS] [--timestamps] [--host H]
 *
 * Each message: {"routing_key", "exchange", "message_id", "content_type",
 * "delivery_mode", "headers": {name: value}, "body"} (with --timestamps
 * also "received_us": the arrival, microseconds since the epoch).  A
 * message is acknowledged once printed.  Exit 0 when N messages arrived
 * (or after the setup with --setup-only), 1 on timeout (what arrived is
 * printed), 2 on errors.
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

/* Die with a message if an RPC failed */
static void
check_reply(amqp_rpc_reply_t r, const char *what)
{
	if (r.reply_type == AMQP_RESPONSE_NORMAL)
		return;
	if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
		fprintf(stderr, "amqp_consume: %s: %s\n", what, amqp_error_string2(r.library_error));
	else if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
			 (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD || r.reply.id == AMQP_CONNECTION_CLOSE_METHOD))
	{
		amqp_channel_close_t *c = r.reply.decoded;	/* same layout as connection.close */

		fprintf(stderr, "amqp_consume: %s: %d %.*s\n", what, c->reply_code,
				(int) c->reply_text.len, (char *) c->reply_text.bytes);
	}
	else
		fprintf(stderr, "amqp_consume: %s: failed\n", what);
	exit(2);
}

/* An AMQP string as a JSON string (or null) */
static json_t *
jbytes(amqp_bytes_t b)
{
	return json_stringn(b.bytes ? b.bytes : "", b.len);
}

/* A header value as JSON: strings, numbers and booleans; others as null */
static json_t *
jfield(amqp_field_value_t *v)
{
	switch (v->kind)
	{
		case AMQP_FIELD_KIND_UTF8:
		case AMQP_FIELD_KIND_BYTES:
			return jbytes(v->value.bytes);
		case AMQP_FIELD_KIND_I8:
			return json_integer(v->value.i8);
		case AMQP_FIELD_KIND_U8:
			return json_integer(v->value.u8);
		case AMQP_FIELD_KIND_I16:
			return json_integer(v->value.i16);
		case AMQP_FIELD_KIND_U16:
			return json_integer(v->value.u16);
		case AMQP_FIELD_KIND_I32:
			return json_integer(v->value.i32);
		case AMQP_FIELD_KIND_U32:
			return json_integer(v->value.u32);
		case AMQP_FIELD_KIND_I64:
			return json_integer(v->value.i64);
		case AMQP_FIELD_KIND_BOOLEAN:
			return json_boolean(v->value.boolean);
		default:
			return json_null();
	}
}

/* Print one delivered message as a JSON line */
static void
print_message(amqp_envelope_t *e, int timestamps)
{
	amqp_basic_properties_t *p = &e->message.properties;
	json_t	   *o = json_object();
	json_t	   *h = json_object();
	char	   *line;

	json_object_set_new(o, "routing_key", jbytes(e->routing_key));
	json_object_set_new(o, "exchange", jbytes(e->exchange));
	json_object_set_new(o, "message_id", (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) ?
						jbytes(p->message_id) : json_null());
	json_object_set_new(o, "content_type", (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG) ?
						jbytes(p->content_type) : json_null());
	json_object_set_new(o, "delivery_mode", (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG) ?
						json_integer(p->delivery_mode) : json_null());
	if (p->_flags & AMQP_BASIC_HEADERS_FLAG)
	{
		int			i;

		for (i = 0; i < p->headers.num_entries; i++)
		{
			amqp_table_entry_t *t = &p->headers.entries[i];
			char	   *name = strndup(t->key.bytes, t->key.len);

			json_object_set_new(h, name, jfield(&t->value));
			free(name);
		}
	}
	json_object_set_new(o, "headers", h);
	json_object_set_new(o, "body", jbytes(e->message.body));
	if (timestamps)
	{
		struct timeval tv;

		gettimeofday(&tv, NULL);
		json_object_set_new(o, "received_us",
							json_integer((json_int_t) tv.tv_sec * 1000000 + tv.tv_usec));
	}
	line = json_dumps(o, JSON_COMPACT);
	printf("%s\n", line);
	free(line);
	json_decref(o);
}

int
main(int argc, char **argv)
{
	const char *host = "127.0.0.1";
	const char *exchange = NULL;
	const char *queue = NULL;
	const char *binds[64];
	int			nbinds = 0;
	int			port = 0;
	int			setup_only = 0;
	int			timestamps = 0;
	long		count = 0;
	double		timeout = 30;
	long		got = 0;
	int			i;
	amqp_connection_state_t conn;
	amqp_socket_t *sock;
	struct timeval tv = {5, 0};
	struct timespec start;

	for (i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
			port = atoi(argv[++i]);
		else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc)
			host = argv[++i];
		else if (strcmp(argv[i], "--exchange") == 0 && i + 1 < argc)
			exchange = argv[++i];
		else if (strcmp(argv[i], "--queue") == 0 && i + 1 < argc)
			queue = argv[++i];
		else if (strcmp(argv[i], "--bind") == 0 && i + 1 < argc && nbinds < 64)
			binds[nbinds++] = argv[++i];
		else if (strcmp(argv[i], "--count") == 0 && i + 1 < argc)
			count = atol(argv[++i]);
		else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc)
			timeout = atof(argv[++i]);
		else if (strcmp(argv[i], "--setup-only") == 0)
			setup_only = 1;
		else if (strcmp(argv[i], "--timestamps") == 0)
			timestamps = 1;
		else
		{
			fprintf(stderr, "usage: amqp_consume --port P --exchange X --queue Q [--bind KEY]... "
					"[--setup-only] [--count N] [--timeout SECONDS] [--timestamps] [--host H]\n");
			return 2;
		}
	}
	if (port <= 0 || exchange == NULL || queue == NULL)
	{
		fprintf(stderr, "amqp_consume: --port, --exchange and --queue are required\n");
		return 2;
	}
	if (nbinds == 0)
		binds[nbinds++] = "#";

	conn = amqp_new_connection();
	sock = amqp_tcp_socket_new(conn);
	if (sock == NULL || amqp_socket_open_noblock(sock, host, port, &tv) != AMQP_STATUS_OK)
	{
		fprintf(stderr, "amqp_consume: could not connect to %s:%d\n", host, port);
		return 2;
	}
	check_reply(amqp_login(conn, "/", 0, AMQP_DEFAULT_FRAME_SIZE, 0, AMQP_SASL_METHOD_PLAIN,
						   "guest", "guest"), "login");
	amqp_channel_open(conn, 1);
	check_reply(amqp_get_rpc_reply(conn), "channel.open");
	amqp_exchange_declare(conn, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes("topic"),
						  0, 1, 0, 0, amqp_empty_table);
	check_reply(amqp_get_rpc_reply(conn), "exchange.declare");
	amqp_queue_declare(conn, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, amqp_empty_table);
	check_reply(amqp_get_rpc_reply(conn), "queue.declare");
	for (i = 0; i < nbinds; i++)
	{
		amqp_queue_bind(conn, 1, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
						amqp_cstring_bytes(binds[i]), amqp_empty_table);
		check_reply(amqp_get_rpc_reply(conn), "queue.bind");
	}
	if (setup_only)
		goto done;

	amqp_basic_qos(conn, 1, 0, 1000, 0);
	check_reply(amqp_get_rpc_reply(conn), "basic.qos");
	amqp_basic_consume(conn, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
					   amqp_empty_table);
	check_reply(amqp_get_rpc_reply(conn), "basic.consume");

	clock_gettime(CLOCK_MONOTONIC, &start);
	while (count <= 0 || got < count)
	{
		amqp_envelope_t env;
		amqp_rpc_reply_t r;
		struct timespec now;
		double		left;
		struct timeval wait;

		clock_gettime(CLOCK_MONOTONIC, &now);
		left = timeout - ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9);
		if (left <= 0)
			break;
		wait.tv_sec = (long) left;
		wait.tv_usec = (long) ((left - (long) left) * 1e6);
		amqp_maybe_release_buffers(conn);
		r = amqp_consume_message(conn, &env, &wait, 0);
		if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
			r.library_error == AMQP_STATUS_TIMEOUT)
			break;
		check_reply(r, "consume");
		print_message(&env, timestamps);
		if (amqp_basic_ack(conn, 1, env.delivery_tag, 0) != AMQP_STATUS_OK)
		{
			fprintf(stderr, "amqp_consume: basic.ack failed\n");
			return 2;
		}
		amqp_destroy_envelope(&env);
		got++;
	}
	fflush(stdout);

done:
	amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
	amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(conn);
	if (!setup_only && count > 0 && got < count)
	{
		fprintf(stderr, "amqp_consume: %ld of %ld messages arrived within %g s\n", got, count, timeout);
		return 1;
	}
	return 0;
}
