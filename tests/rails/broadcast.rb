# frozen_string_literal: true
#
# A Rails backend's side of ActionCable, and nothing else: it broadcasts with
# `ActionCable.server.broadcast(stream, message)` through the subscription adapter named in
# CABLE_ADAPTER, configured as a Rails app's config/cable.yml would be:
#   CABLE_ADAPTER=postgresql   the app's database (DATABASE_URL), via ActiveRecord
#   CABLE_ADAPTER=redis        REDIS_URL, with CHANNEL_PREFIX as channel_prefix
# It reads one broadcast per line on stdin, "<stream>\t<JSON message>", and answers "sent"
# on stdout after each, or "error <what>" when the adapter failed (tests/js and the soak drive
# it). Debian's ruby-actioncable, ruby-activerecord, ruby-pg and ruby-redis are all it needs.

require "json"
require "logger"
require "active_support/core_ext/string/inflections" # Rails 6.1 needs it for the adapter name
require "active_support/hash_with_indifferent_access"
require "action_cable"

adapter = ENV.fetch("CABLE_ADAPTER")
cable = { "adapter" => adapter }
case adapter
when "postgresql"
  require "active_record"
  ActiveRecord::Base.establish_connection(ENV.fetch("DATABASE_URL"))
  ActiveRecord::Base.logger = nil
when "redis"
  cable["url"] = ENV.fetch("REDIS_URL")
else
  abort "CABLE_ADAPTER must be postgresql or redis"
end
cable["channel_prefix"] = ENV["CHANNEL_PREFIX"] if ENV["CHANNEL_PREFIX"]

# As config_for(:cable) gives it to a Rails app: ActionCable reads "adapter" and :channel_prefix.
ActionCable.server.config.cable = ActiveSupport::HashWithIndifferentAccess.new(cable)
ActionCable.server.config.logger = Logger.new($stderr, level: Logger::WARN)

$stdout.sync = true
puts "ready #{ActionCable.version}"
$stdin.each_line do |line|
  stream, message = line.chomp.split("\t", 2)
  begin
    ActionCable.server.broadcast(stream, JSON.parse(message))
    puts "sent"
  rescue StandardError => e
    # The adapter's connection broke (a database or Redis restart): say so and go on; the
    # driver decides whether to start a fresh broadcaster.
    puts "error #{e.class}: #{e.message.lines.first&.strip}"
  end
end
